//! `[approvals]`: where new just-in-time approval tickets are announced.

use serde::Deserialize;

/// `[approvals]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    /// URL every new approval ticket is POSTed to as JSON (chat-ops), e.g.
    /// `https://chat.example.com/hooks/portcullis`. Default: none.
    pub webhook: Option<String>,
}

/// Checks that the webhook, when set, is an http(s) URL.
pub(super) fn check(approvals: &RawApprovals) -> Result<(), String> {
    if let Some(url) = &approvals.webhook {
        let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some()
        });
        if !ok {
            return Err(format!(
                "key `approvals.webhook`: `{url}` is not an http(s) URL"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::check;

    #[test]
    fn approvals_webhook() {
        check(
            "[approvals]\nwebhook = \"ftp://x\"",
            "key `approvals.webhook`: `ftp://x` is not an http(s) URL",
        );
        check(
            "[approvals]\nwebhook = \"https://chat.example.com/hook\"",
            "ok ",
        );
    }
}
