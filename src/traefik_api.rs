//! What `spawngate check` reads from Traefik's API (`traefik.api_url`): that Traefik
//! answers, has loaded spawngate's routes, and that every configured entry point
//! deletes or rejects look-alike header names (`http.aliasHeadersStrategy`).
//!
//! spawngate does not depend on that option for its own headers (see
//! [`crate::headers`]), but without it every other header Traefik sets, such as
//! `X-Forwarded-For`, can still be imitated by a client, so check asks for it.

use serde_json::Value;

use crate::config::Config;
use crate::outbound::HttpsClient;

/// One line of the report.
#[derive(Debug, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    Warning(String),
    Failed(String),
}

/// Reads Traefik's API; `None` when no API URL is configured.
pub async fn check(config: &Config) -> Option<Vec<Finding>> {
    let api = config.traefik.api_url.as_deref()?;
    let client = match HttpsClient::allowing_plain_http() {
        Ok(c) => c,
        Err(e) => return Some(vec![Finding::Failed(e.to_string())]),
    };
    let version = match client
        .get_json::<Value>(&format!("{api}/api/version"))
        .await
    {
        Ok(v) => v["Version"].as_str().unwrap_or("unknown").to_owned(),
        Err(e) => {
            return Some(vec![Finding::Failed(format!(
                "cannot read Traefik's API at {api}: {e}"
            ))]);
        }
    };
    let mut out = vec![Finding::Ok(format!(
        "API at {api} answers (Traefik {version})"
    ))];
    let router = format!("{api}/api/http/routers/spawngate@http");
    out.push(match client.get_json::<Value>(&router).await {
        Ok(_) => Finding::Ok("spawngate's routes are loaded".into()),
        Err(e) => Finding::Warning(format!(
            "Traefik has not loaded spawngate's routes ({e}): is its HTTP provider's endpoint {}/traefik/config?",
            config.internal_url
        )),
    });
    match client
        .get_json::<Value>(&format!("{api}/api/entrypoints"))
        .await
    {
        Ok(list) => out.extend(assess_entry_points(&list, &config.traefik.entry_points)),
        Err(e) => out.push(Finding::Failed(format!(
            "cannot list Traefik's entry points: {e}"
        ))),
    }
    Some(out)
}

/// Judges the `/api/entrypoints` answer for the entry points spawngate's routers use.
pub fn assess_entry_points(list: &Value, wanted: &[String]) -> Vec<Finding> {
    wanted
        .iter()
        .map(|name| {
            let Some(ep) = list
                .as_array()
                .and_then(|eps| eps.iter().find(|ep| ep["name"] == name.as_str()))
            else {
                return Finding::Warning(format!(
                    "entry point '{name}' (traefik.entry_points) is not defined in Traefik"
                ));
            };
            let http = &ep["http"];
            let fix = format!(
                "set entryPoints.{name}.http.aliasHeadersStrategy: delete (spawngate's own headers are protected regardless)"
            );
            match http["aliasHeadersStrategy"].as_str() {
                Some(s @ ("delete" | "reject")) => Finding::Ok(format!(
                    "entry point '{name}' has aliasHeadersStrategy {s}: look-alike header names never reach apps"
                )),
                _ if matches!(
                    http["underscoreHeadersStrategy"].as_str(),
                    Some("delete" | "reject")
                ) =>
                {
                    Finding::Warning(format!(
                        "entry point '{name}' handles only underscores (underscoreHeadersStrategy), not other look-alikes such as X.Forwarded.For: {fix}"
                    ))
                }
                _ => Finding::Warning(format!(
                    "entry point '{name}' passes look-alike header names (X_Forwarded_For…) to apps: {fix}"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entry_points_are_judged_by_their_alias_strategy() {
        let list = json!([
            { "name": "web", "http": { "aliasHeadersStrategy": "delete" } },
            { "name": "old", "http": { "underscoreHeadersStrategy": "reject" } },
            { "name": "open", "http": { "sanitizePath": true } },
        ]);
        let found = assess_entry_points(&list, &names(&["web", "old", "open", "missing"]));
        assert!(matches!(&found[0], Finding::Ok(m) if m.contains("delete")));
        assert!(matches!(&found[1], Finding::Warning(m) if m.contains("only underscores")));
        assert!(
            matches!(&found[2], Finding::Warning(m) if m.contains("entryPoints.open.http.aliasHeadersStrategy"))
        );
        assert!(matches!(&found[3], Finding::Warning(m) if m.contains("not defined")));
    }
}
