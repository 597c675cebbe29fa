//! Static files under `/_spawngate/assets/`: the stylesheet and the small scripts
//! pages use. Compiled in (no files to deploy), served with a content type and
//! cached briefly; scripts live here rather than inline, so the pages'
//! Content-Security-Policy can refuse every inline script.

use bytes::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use hyper::{Response, StatusCode};

use super::Resp;

pub const PREFIX: &str = "/_spawngate/assets/";

/// Every asset: name under [`PREFIX`], content type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "progress.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/progress.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/admin.js"),
    ),
];

/// The asset called `name`, or `None` (the caller answers 404).
pub fn serve(name: &str) -> Option<Resp> {
    let (_, content_type, body) = ASSETS.iter().find(|(n, _, _)| *n == name)?;
    let mut resp = Response::new(super::full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Short: a new release's assets reach browsers within minutes.
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_known_assets_with_their_type_and_nothing_else() {
        let css = serve("style.css").expect("style.css");
        assert_eq!(css.headers()[CONTENT_TYPE], "text/css; charset=utf-8");
        assert!(serve("../mod.rs").is_none());
        assert!(serve("").is_none());
    }
}
