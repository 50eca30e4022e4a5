//! The login and consent page of the authorization endpoint: one form naming
//! the client (its registered name and id), where it will be sent back to,
//! the resource and the scope, asking a local user for their name and TOTP
//! code, with Allow and Deny, and one "Log in with <issuer> and allow" per
//! OIDC login issuer. Every value is HTML-escaped; the page loads
//! nothing, runs no script and may not be framed.

use http::{HeaderValue, Response, StatusCode, header};

use super::{AUTHORIZE_PATH, AuthorizationRequest};
use crate::respond::{ResponseBody, full};

/// HTML-escapes text for element content and quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The page for the pending login `login_id`; `error` is shown above the form
/// after a refused login.
pub(super) fn login_page(
    request: &AuthorizationRequest,
    login_id: &str,
    issuers: Vec<(usize, String)>,
    error: Option<&str>,
) -> Response<ResponseBody> {
    // One button per OIDC issuer: allow, logging in there instead of here.
    let issuers: String = issuers
        .iter()
        .map(|(index, name)| {
            format!(
                "<p><button name=\"decision\" value=\"{}{index}\" formnovalidate>Log in with {} and allow</button></p>\n",
                super::callback::OIDC_DECISION,
                escape(name)
            )
        })
        .collect();
    let redirect_host = request
        .redirect_uri
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Authorize {name} - Portcullis</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;max-width:32em;margin:2em auto}}dt{{font-weight:bold}}.error{{color:#a00}}</style>
</head><body>
<h1>Authorize an application</h1>
<p><strong>{name}</strong> asks to act for you through Portcullis.</p>
<dl>
<dt>Client</dt><dd>{name} (<code>{client_id}</code>)</dd>
<dt>Returns to</dt><dd><code>{redirect_host}</code></dd>
<dt>Resource</dt><dd><code>{resource}</code></dd>
<dt>Scope</dt><dd><code>{scope}</code>: what policy allows both you and the gateway's agent, never more than you</dd>
</dl>
{error}
<form method="post" action="{action}">
<input type="hidden" name="login" value="{login_id}">
<p><label>User <input name="user" autocomplete="username" required></label></p>
<p><label>TOTP code <input name="totp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{{6}}" required></label></p>
<p><button name="decision" value="allow">Allow</button>
<button name="decision" value="deny" formnovalidate>Deny</button></p>
{issuers}</form>
</body></html>
"#,
        name = escape(&request.client_name),
        client_id = escape(&request.client_id),
        redirect_host = escape(&redirect_host),
        resource = escape(&request.resource),
        scope = escape(&request.scope),
        action = AUTHORIZE_PATH,
        login_id = escape(login_id),
    );
    let mut response = Response::new(full(body));
    *response.status_mut() = if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Nothing to load, no script, never framed (clickjacking of the Allow
    // button); the form posts back here only.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn values_are_escaped() {
        let request = AuthorizationRequest {
            client_id: "c1".into(),
            client_name: "<script>alert(1)</script>\"x".into(),
            redirect_uri: "http://127.0.0.1:5000/cb".into(),
            state: None,
            code_challenge: String::new(),
            resource: "https://gw/mcp".into(),
            scope: "mcp".into(),
        };
        let response = login_page(
            &request,
            "id\"><b>",
            vec![(0, "<b>IdP</b>".into())],
            Some("refused <b>"),
        );
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("<script>"), "{body}");
        assert!(!body.contains("<b>"), "{body}");
        assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;x"));
        assert!(body.contains("<code>127.0.0.1:5000</code>"));
        assert!(body.contains(
            "value=\"oidc-0\" formnovalidate>Log in with &lt;b&gt;IdP&lt;/b&gt; and allow"
        ));
    }
}
