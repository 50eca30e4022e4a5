//! HTML building blocks of the console: escaping, the page frame (navigation,
//! logout, the flash message) and the forms every action uses (each with the
//! session's CSRF token). Every value from the API or the user goes through
//! [`esc`]; nothing is ever written into a `<script>` or a style attribute
//! (the CSP forbids both).

use std::fmt::Write;

use serde_json::Value;

use super::session::{Flash, SessionView};

/// HTML-escapes text for element content and quoted attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub(crate) fn url_part(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A JSON value as display text: strings bare, `null` as `-`.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC, `-` when absent or zero.
pub(crate) fn time_ms(value: &Value) -> String {
    match value.as_i64() {
        Some(ms) if ms > 0 => rfc3339(i128::from(ms) * 1_000_000),
        _ => "-".to_string(),
    }
}

/// Seconds since the epoch as RFC 3339 UTC, `-` when absent or zero.
pub(crate) fn time_s(value: &Value) -> String {
    match value.as_i64() {
        Some(s) if s > 0 => rfc3339(i128::from(s) * 1_000_000_000),
        _ => "-".to_string(),
    }
}

fn rfc3339(nanos: i128) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "-".to_string())
}

/// The pages, in navigation order: (path, title).
const PAGES: &[(&str, &str)] = &[
    ("/console", "Overview"),
    ("/console/agents", "Agents"),
    ("/console/approvals", "Approvals"),
    ("/console/alerts", "Alerts"),
    ("/console/policies", "Policies"),
    ("/console/tools", "MCP tools"),
    ("/console/audit", "Audit"),
    ("/console/inventory", "Inventory"),
    ("/console/step-up", "Step-up"),
];

/// A whole page: head (stylesheet and script from `/console/assets`), the
/// navigation with the current page marked, the flash message, the body.
pub(crate) fn page(
    title: &str,
    current: &str,
    session: Option<&SessionView>,
    flash: Option<Flash>,
    body: &str,
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Portcullis</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head><body>",
        esc(title)
    );
    out.push_str("<header><span class=\"brand\">Portcullis</span>");
    if let Some(session) = session {
        out.push_str("<nav>");
        for (path, name) in PAGES {
            let mark = if *path == current {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(out, "<a href=\"{path}\"{mark}>{name}</a>");
        }
        out.push_str("</nav>");
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/console/logout\" class=\"logout\">{}\
             <span class=\"who\">{}</span><button type=\"submit\">Log out</button></form>",
            csrf_field(session),
            esc(&format!("{} ({})", session.name, session.role))
        );
    }
    out.push_str("</header><main>");
    if let Some(flash) = flash {
        let class = if flash.ok { "flash ok" } else { "flash error" };
        let _ = write!(
            out,
            "<p class=\"{class}\" role=\"status\" id=\"flash\">{}</p>",
            esc(&flash.text)
        );
    }
    let _ = write!(out, "<h1>{}</h1>{body}</main></body></html>", esc(title));
    out
}

/// The hidden CSRF field every form of a session carries.
pub(crate) fn csrf_field(session: &SessionView) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&session.csrf)
    )
}

/// The optional step-up fields of a sensitive action: once an admin has
/// enrolled, the API asks for their name and a fresh TOTP code, unless the
/// session's step-up window is open (a code or a passkey on the step-up
/// page opens it).
pub(crate) fn step_up_fields() -> &'static str {
    "<span class=\"stepup\"><input name=\"user\" placeholder=\"admin (step-up)\" autocomplete=\"username\" size=\"10\">\
     <input name=\"totp\" placeholder=\"TOTP\" inputmode=\"numeric\" autocomplete=\"one-time-code\" size=\"6\"></span>"
}

/// A one-button form posting to `action`, with hidden fields, the CSRF token
/// and optionally the step-up fields. `confirm` asks the browser to confirm
/// first (the script does; without it the form posts directly).
pub(crate) fn action_form(
    session: &SessionView,
    action: &str,
    label: &str,
    hidden: &[(&str, &str)],
    step_up: bool,
    confirm: Option<&str>,
) -> String {
    let mut out = String::new();
    let confirm = confirm
        .map(|c| format!(" data-confirm=\"{}\"", esc(c)))
        .unwrap_or_default();
    let _ = write!(
        out,
        "<form method=\"post\" action=\"{}\" class=\"inline\"{confirm}>{}",
        esc(action),
        csrf_field(session)
    );
    for (name, value) in hidden {
        let _ = write!(
            out,
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(name),
            esc(value)
        );
    }
    if step_up {
        out.push_str(step_up_fields());
    }
    let _ = write!(
        out,
        "<button type=\"submit\">{}</button></form>",
        esc(label)
    );
    out
}

/// A table from a header row and rows of already-escaped cells.
pub(crate) fn table(id: &str, headings: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p class=\"empty\" id=\"{id}\">{}</p>", esc(empty));
    }
    let mut out = format!("<table id=\"{id}\"><thead><tr>");
    for h in headings {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A JSON value shown as indented text in a `<pre>`.
pub(crate) fn pre_json(value: &Value) -> String {
    format!(
        "<pre>{}</pre>",
        esc(&serde_json::to_string_pretty(value).unwrap_or_default())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(url_part("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(
            time_ms(&serde_json::json!(1_700_000_000_123i64)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(time_s(&serde_json::json!(0)), "-");
    }
}
