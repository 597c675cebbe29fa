//! The frame of spawngate's signed-in pages (the dashboard, the admin page): the
//! header with the navigation and sign-out, the wide layout, their scripts; and
//! numbers and times in words people read.

use super::pages::escape;

/// Who is signed in, for the header of spawngate's signed-in pages.
pub struct Nav<'a> {
    pub user: &'a str,
    pub admin: bool,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: &'a str,
    /// Which entry is the current page (`dashboard` or `admin`).
    pub current: &'a str,
}

/// A signed-in page: the header (dashboard, admin for admins, sign out), a wide
/// layout, and `scripts` (names under `/_spawngate/assets/`, loaded deferred).
/// `body` is trusted markup.
pub fn shell(title: &str, nav: &Nav<'_>, body: &str, scripts: &[&str]) -> String {
    let entry = |href: &str, key: &str, label: &str| {
        let current = if nav.current == key {
            r#" aria-current="page""#
        } else {
            ""
        };
        format!(r#"<a href="{href}"{current}>{label}</a>"#)
    };
    let admin = if nav.admin {
        entry("/_spawngate/admin", "admin", "Admin")
    } else {
        String::new()
    };
    let scripts: String = scripts
        .iter()
        .map(|s| {
            format!(
                r#"<script src="/_spawngate/assets/{}" defer></script>"#,
                escape(s)
            )
        })
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · spawngate</title>
<link rel="stylesheet" href="/_spawngate/assets/style.css">{scripts}</head>
<body class="wide">
<header class="bar"><a class="brand" href="/_spawngate/">spawngate</a>
<nav aria-label="Main">{dashboard}{admin}</nav>
<form class="signout" method="post" action="/_spawngate/logout"><span class="muted">{user}</span> <input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="secondary small">Sign out</button></form>
</header>
<main>
<h1>{title}</h1>
{body}
</main>
</body></html>
"#,
        title = escape(title),
        dashboard = entry("/_spawngate/", "dashboard", "Dashboard"),
        user = escape(nav.user),
        csrf = escape(nav.csrf),
    )
}

/// A duration for people: `45 s`, `12 min`, `3 h 5 min`, `2 days`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => match (secs % 3600) / 60 {
            0 => format!("{} h", secs / 3600),
            m => format!("{} h {m} min", secs / 3600),
        },
        _ => match secs / 86400 {
            1 => "1 day".to_owned(),
            d => format!("{d} days"),
        },
    }
}

/// `at` (RFC 3339) relative to now, `3 min ago` or `in 12 min`, inside a
/// `<time>` element scripts can update; `—` when unknown.
pub fn time_ago(at: Option<&str>) -> String {
    let Some((at, unix)) = at.and_then(|a| Some((a, crate::time::parse_rfc3339(a)?))) else {
        return "—".to_owned();
    };
    let delta = crate::time::unix_now() - unix;
    let text = if delta >= 0 {
        format!("{} ago", human_duration(delta))
    } else {
        format!("in {}", human_duration(-delta))
    };
    format!(
        r#"<time datetime="{}" title="{}">{text}</time>"#,
        escape(at),
        escape(at)
    )
}

/// Bytes for people (`512 MiB`, `1.5 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_people() {
        assert_eq!(human_duration(42), "42 s");
        assert_eq!(human_duration(125), "2 min");
        assert_eq!(human_duration(7200), "2 h");
        assert_eq!(human_duration(3 * 3600 + 300), "3 h 5 min");
        assert_eq!(human_duration(86400 * 3), "3 days");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(10 << 20), "10.0 MiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(time_ago(None), "—");
        let past = crate::time::rfc3339(crate::time::unix_now() - 120);
        assert!(time_ago(Some(&past)).contains(">2 min ago<"));
    }

    #[test]
    fn shell_shows_the_admin_entry_to_admins_only() {
        let nav = |admin| Nav {
            user: "<bob>",
            admin,
            csrf: "t",
            current: "dashboard",
        };
        let page = shell("Home", &nav(false), "", &["dashboard.js"]);
        assert!(!page.contains("/_spawngate/admin"));
        assert!(page.contains("&lt;bob&gt;") && page.contains("dashboard.js"));
        assert!(page.contains(r#"href="/_spawngate/" aria-current="page""#));
        assert!(shell("Home", &nav(true), "", &[]).contains("/_spawngate/admin"));
    }
}
