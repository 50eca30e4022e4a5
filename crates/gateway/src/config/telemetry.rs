//! `[telemetry]`: OpenTelemetry trace export over OTLP/HTTP.

use serde::Deserialize;

use super::{SecretHeaders, opt_webhook, otlp_url, secret_headers};

/// `[telemetry]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/HTTP base URL; spans go to `{otlp_endpoint}/v1/traces`. Tracing is
    /// off when absent.
    #[serde(default, deserialize_with = "opt_webhook")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the resource (default `portcullis`).
    pub service_name: Option<String>,
    /// Share of requests traced, 0.0 to 1.0 (default 1.0).
    pub sampling_ratio: Option<f64>,
    /// Static request headers for the collector; values are never logged.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// OpenTelemetry trace export.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `{otlp_endpoint}/v1/traces`.
    pub traces_url: http::Uri,
    /// Static headers.
    pub headers: SecretHeaders,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Share of requests traced, 0.0 to 1.0.
    pub sampling_ratio: f64,
}

/// Default `service.name` of OTLP resources.
pub const DEFAULT_SERVICE_NAME: &str = "portcullis";

/// Checks the trace export settings; `None` when tracing is off.
pub(super) fn validate_telemetry(raw: &RawTelemetry) -> Result<Option<TelemetryConfig>, String> {
    let ratio = raw.sampling_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&ratio) {
        return Err("key `telemetry.sampling_ratio`: must be between 0.0 and 1.0".into());
    }
    // `service_name` alone is fine: it also names the resource of `otlp`
    // export sinks.
    let Some(endpoint) = &raw.otlp_endpoint else {
        if !raw.headers.is_empty() || raw.sampling_ratio.is_some() {
            return Err(
                "key `telemetry.otlp_endpoint`: required when tracing is configured".into(),
            );
        }
        return Ok(None);
    };
    Ok(Some(TelemetryConfig {
        traces_url: otlp_url(endpoint, "traces")
            .map_err(|e| format!("key `telemetry.otlp_endpoint`: {e}"))?,
        headers: secret_headers(&raw.headers)
            .map_err(|e| format!("key `telemetry.headers`: {e}"))?,
        service_name: raw
            .service_name
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string()),
        sampling_ratio: ratio,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::tests::check_export;

    #[test]
    fn trace_export() {
        check_export(
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsampling_ratio = 0.25\n",
            "traces_url: http://c:4318/v1/traces, headers: [], service_name: \"portcullis\", sampling_ratio: 0.25",
        );
        check_export(
            "[telemetry]\nsampling_ratio = 2.0\notlp_endpoint = \"http://c\"\n",
            "must be between 0.0 and 1.0",
        );
        check_export(
            "[telemetry]\nsampling_ratio = 0.5\n",
            "telemetry.otlp_endpoint`: required",
        );
    }
}
