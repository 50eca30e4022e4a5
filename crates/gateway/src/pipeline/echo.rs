//! Forward's last step on a request that carried a vault credential: an
//! upstream error answer (any status outside 2xx) that echoes the credential
//! it was given (`401 Incorrect API key provided: sk-…`) has every copy of it
//! replaced by [`PLACEHOLDER`], in its headers and its body, on every
//! protocol (HTTP, MCP and LLM routes all forward through here).
//!
//! The match is by exact value, not by pattern: a credential of no known
//! format is caught as surely as an `sk-` key, whether or not the route runs
//! DLP. The forms searched are the value itself, as the injection placed it
//! (the `Basic` pair's base64, the percent-encoded query value), and
//! JSON-escaped. The body streams: the redactor holds back only a tail that
//! could still be the start of one of them (shorter than the longest form).
//! A compressed error answer cannot be read; the gateway asked for none on
//! routes that scan (`Accept-Encoding` is dropped), and elsewhere it passes.
//!
//! A 2xx answer passes unchanged: an upstream that echoes a request on
//! purpose (the test upstreams do) is the upstream's business, and the
//! route's DLP reads successful answers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use zeroize::Zeroizing;

use crate::body::BoxError;
use crate::config::Injection;
use crate::pipeline::inject::Injected;
use crate::respond::ResponseBody;

/// What replaces an echoed credential.
pub const PLACEHOLDER: &str = "[REDACTED_CREDENTIAL]";

/// Shortest form searched: a shorter value would match ordinary bytes.
const MIN_NEEDLE: usize = 4;

/// The forms of one injected credential an answer may echo.
pub struct Needles(Vec<Zeroizing<Vec<u8>>>);

impl Needles {
    /// The forms of `injected`'s value (see the module docs).
    pub fn of(injected: &Injected) -> Self {
        use base64::Engine;
        let value: &[u8] = &injected.value.value;
        let mut forms: Vec<Zeroizing<Vec<u8>>> = vec![Zeroizing::new(value.to_vec())];
        match &injected.injection {
            Injection::Basic(user) => {
                let mut pair = Zeroizing::new(Vec::with_capacity(user.len() + 1 + value.len()));
                pair.extend_from_slice(user.as_bytes());
                pair.push(b':');
                pair.extend_from_slice(value);
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair.as_slice());
                forms.push(Zeroizing::new(encoded.into_bytes()));
            }
            Injection::Query(_) => {
                let mut encoded = Zeroizing::new(Vec::with_capacity(value.len() * 3));
                for &b in value {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                        encoded.push(b);
                    } else {
                        encoded.extend_from_slice(format!("%{b:02X}").as_bytes());
                    }
                }
                forms.push(encoded);
            }
            Injection::Header { .. } => {}
        }
        if let Ok(text) = std::str::from_utf8(value)
            && let Ok(quoted) = serde_json::to_string(text)
        {
            let inner = &quoted.as_bytes()[1..quoted.len() - 1];
            forms.push(Zeroizing::new(inner.to_vec()));
        }
        forms.retain(|f| f.len() >= MIN_NEEDLE);
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup_by(|a, b| a.as_slice() == b.as_slice());
        Needles(forms)
    }

    fn longest(&self) -> usize {
        self.0.first().map_or(0, |f| f.len())
    }

    /// The longest form at the start of `text`, if one is.
    fn at(&self, text: &[u8]) -> Option<usize> {
        self.0
            .iter()
            .find(|f| text.starts_with(f.as_slice()))
            .map(|f| f.len())
    }

    /// Whether `tail` (shorter than a form) could grow into one.
    fn could_start(&self, tail: &[u8]) -> bool {
        self.0
            .iter()
            .any(|f| f.len() > tail.len() && f.starts_with(tail))
    }

    /// Replaces every form in `pending` and returns what can go out; with
    /// `last`, everything. Keeps in `pending` a tail that could still grow
    /// into a form.
    fn redact(&self, pending: &mut Vec<u8>, last: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(pending.len());
        let mut i = 0;
        while i < pending.len() {
            if let Some(n) = self.at(&pending[i..]) {
                out.extend_from_slice(PLACEHOLDER.as_bytes());
                i += n;
                continue;
            }
            if !last && pending.len() - i < self.longest() && self.could_start(&pending[i..]) {
                break;
            }
            out.push(pending[i]);
            i += 1;
        }
        pending.drain(..i);
        out
    }
}

/// Redacts an error answer's copies of the credential; a 2xx answer, or an
/// answer to a request without one, is returned as it is.
pub fn guard(response: Response<ResponseBody>, needles: Option<Needles>) -> Response<ResponseBody> {
    let Some(needles) = needles.filter(|n| !n.0.is_empty()) else {
        return response;
    };
    if response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    for value in parts.headers.values_mut() {
        let mut bytes = value.as_bytes().to_vec();
        let redacted = needles.redact(&mut bytes, true);
        if redacted != value.as_bytes()
            && let Ok(v) = HeaderValue::from_bytes(&redacted)
        {
            *value = v;
        }
    }
    // Placeholders change the length.
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = EchoBody {
        inner: body,
        needles,
        pending: Vec::new(),
        trailers: None,
        done: false,
    };
    Response::from_parts(parts, body.boxed())
}

/// An error answer's body on its way out, redacted as it streams.
struct EchoBody {
    inner: ResponseBody,
    needles: Needles,
    pending: Vec<u8>,
    /// Trailers that arrived while redacted bytes were still held.
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(t) = this.trailers.take() {
                this.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.pending.extend_from_slice(&data);
                        let out = this.needles.redact(&mut this.pending, false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        let out = this.needles.redact(&mut this.pending, true);
                        this.done = this.trailers.is_none();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.done = true;
                    let out = this.needles.redact(&mut this.pending, true);
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needles(forms: &[&str]) -> Needles {
        let mut v: Vec<Zeroizing<Vec<u8>>> = forms
            .iter()
            .map(|f| Zeroizing::new(f.as_bytes().to_vec()))
            .collect();
        v.sort_by_key(|f| std::cmp::Reverse(f.len()));
        Needles(v)
    }

    #[test]
    fn every_copy_is_replaced_at_any_split() {
        let n = needles(&["s3cr3t-value", "czNjcjN0"]);
        let text = "bad key s3cr3t-value; basic czNjcjN0 and s3cr3t-value again s3cr3t";
        let want = "bad key [REDACTED_CREDENTIAL]; basic [REDACTED_CREDENTIAL] and \
                    [REDACTED_CREDENTIAL] again s3cr3t";
        for cut in 0..=text.len() {
            let mut pending = text.as_bytes()[..cut].to_vec();
            let mut out = n.redact(&mut pending, false);
            // Nothing that goes out may end in a prefix of the value.
            assert!(!String::from_utf8_lossy(&out).contains("s3cr3t-"), "{cut}");
            pending.extend_from_slice(&text.as_bytes()[cut..]);
            out.extend(n.redact(&mut pending, true));
            assert_eq!(String::from_utf8(out).unwrap(), want, "split at {cut}");
            assert!(pending.is_empty());
        }
    }
}
