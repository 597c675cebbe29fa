//! The signed-in pages' forms: every one posts with the session's CSRF token in a
//! hidden `csrf` field and, done, redirects back (`303`), so the pages work
//! without JavaScript and a reload never repeats an action.

use std::collections::HashMap;

use hyper::{Request, StatusCode};

use super::login::{FormOrigin, form_origin};
use super::pages::{escape, page};
use super::{ReqBody, Resp, html, read_body, redirect};
use crate::app::App;
use crate::auth::Identity;

/// A posted form from a signed-in page whose CSRF token checked out.
pub(super) struct SignedInForm {
    pub identity: Identity,
    pub fields: HashMap<String, String>,
}

impl SignedInForm {
    /// A field's value, trimmed (`""` when absent).
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", |v| v.trim())
    }

    /// A checkbox: present means on.
    pub fn checked(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }
}

/// Reads a form posted from one of spawngate's signed-in pages, or the answer
/// that refuses it: another site's post (403), no session (to sign in), a stale
/// or forged CSRF token (403).
pub(super) async fn signed_in<B: ReqBody>(
    app: &App,
    req: Request<B>,
) -> Result<SignedInForm, Resp> {
    if form_origin(app, req.headers()) == FormOrigin::Foreign {
        return Err(super::errors::forbidden(true));
    }
    let identity = match app.identities.identify(req.headers()).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return Err(redirect(StatusCode::SEE_OTHER, "/_spawngate/login")),
        Err(e) => return Err(super::errors::store_unavailable(true, &e)),
    };
    let body = read_body(req.into_body())
        .await
        .map_err(|e| super::errors::html_answer(&e))?;
    let fields: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let csrf = fields.get("csrf").map_or("", String::as_str);
    if !app.sessions.csrf_ok(&identity.session, csrf) {
        return Err(stale_form());
    }
    Ok(SignedInForm { identity, fields })
}

/// A form whose CSRF token does not match the session (an old tab, or a forgery).
fn stale_form() -> Resp {
    html(
        StatusCode::FORBIDDEN,
        page(
            "Not done",
            "",
            r#"<p class="status">Error 403</p><p>The form was stale or forged, so nothing was changed.</p><p><a href="/_spawngate/">Back to your dashboard</a></p>"#,
        ),
    )
}

/// The hidden CSRF field every signed-in form carries.
pub(super) fn csrf_field(csrf: &str) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        escape(csrf)
    )
}

/// A one-button form posting to `action` (`class` styles the button).
pub(super) fn button(
    action: &str,
    csrf: &str,
    label: &str,
    class: &str,
    hidden: &[(&str, &str)],
) -> String {
    let hidden: String = hidden
        .iter()
        .map(|(k, v)| {
            format!(
                r#"<input type="hidden" name="{}" value="{}">"#,
                escape(k),
                escape(v)
            )
        })
        .collect();
    let class = if class.is_empty() {
        String::new()
    } else {
        format!(r#" class="{}""#, escape(class))
    };
    format!(
        r#"<form class="inline" method="post" action="{}">{}{hidden}<button type="submit"{class}>{}</button></form>"#,
        escape(action),
        csrf_field(csrf),
        escape(label)
    )
}

/// Back to `page` with one of its fixed notices (`?done=<key>`): pages map the
/// key to a sentence, so nothing a link carries is ever shown as is.
pub(super) fn done(page: &str, key: &str) -> Resp {
    redirect(StatusCode::SEE_OTHER, &format!("{page}?done={key}"))
}
