//! The console's two pictures, as inline SVG built on the server (no chart
//! library, no script): the risk timeline of the alerts page and the
//! data-flow graph of the inventory page. Styling is by class, from the
//! stylesheet (the CSP allows no inline style).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::html::esc;

/// One point of an agent's risk over time.
pub(crate) struct RiskPoint {
    pub(crate) agent: String,
    pub(crate) time_ms: i64,
    pub(crate) risk: f64,
    /// An alert was raised at this point.
    pub(crate) alert: bool,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 220.0;
const PAD: f64 = 36.0;

/// Risk (0 to 1, or higher) against time, a line per agent, a dot per alert.
pub(crate) fn risk_timeline(points: &[RiskPoint]) -> String {
    if points.is_empty() {
        return "<p class=\"empty\" id=\"risk-timeline\">No risk history yet.</p>".to_string();
    }
    let t0 = points.iter().map(|p| p.time_ms).min().unwrap_or(0);
    let t1 = points
        .iter()
        .map(|p| p.time_ms)
        .max()
        .unwrap_or(0)
        .max(t0 + 1);
    let top = points
        .iter()
        .map(|p| p.risk)
        .fold(1.0f64, f64::max)
        .max(f64::EPSILON);
    let x = |t: i64| PAD + (t - t0) as f64 / (t1 - t0) as f64 * (WIDTH - 2.0 * PAD);
    let y = |r: f64| HEIGHT - PAD - r.max(0.0) / top * (HEIGHT - 2.0 * PAD);
    let mut series: BTreeMap<&str, Vec<&RiskPoint>> = BTreeMap::new();
    for p in points {
        series.entry(&p.agent).or_default().push(p);
    }
    let mut out = format!(
        "<svg id=\"risk-timeline\" class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" \
         aria-label=\"risk over time per agent\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\"/>\
         <text class=\"label\" x=\"4\" y=\"{PAD}\">{top:.2}</text>\
         <text class=\"label\" x=\"4\" y=\"{b}\">0</text>",
        b = HEIGHT - PAD,
        r = WIDTH - PAD,
    );
    for (n, (agent, mut pts)) in series.into_iter().enumerate() {
        pts.sort_by_key(|p| p.time_ms);
        let class = format!("series s{}", n % 6);
        let line: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.time_ms), y(p.risk)))
            .collect();
        let _ = write!(
            out,
            "<polyline class=\"{class}\" points=\"{}\"><title>{}</title></polyline>",
            line.join(" "),
            esc(agent)
        );
        for p in pts.iter().filter(|p| p.alert) {
            let _ = write!(
                out,
                "<circle class=\"{class} alert\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\"><title>{} risk {:.2}</title></circle>",
                x(p.time_ms),
                y(p.risk),
                esc(agent),
                p.risk
            );
        }
        let _ = write!(
            out,
            "<text class=\"label {class}\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            WIDTH - PAD + 2.0,
            PAD + 12.0 * n as f64,
            esc(agent)
        );
    }
    out.push_str("</svg>");
    out
}

/// One edge of the data-flow graph.
pub(crate) struct Flow {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) requests: u64,
    pub(crate) denied: u64,
    pub(crate) classification: String,
}

/// Identities on the left, resources on the right, an edge per flow
/// (thicker with more requests; marked when some were denied).
pub(crate) fn flow_graph(identities: &[String], resources: &[String], flows: &[Flow]) -> String {
    if identities.is_empty() && resources.is_empty() {
        return "<p class=\"empty\" id=\"flow-graph\">No identities or resources yet.</p>"
            .to_string();
    }
    let row = 34.0;
    let rows = identities.len().max(resources.len()).max(1) as f64;
    let height = rows * row + 2.0 * PAD;
    let (left, right) = (180.0, WIDTH - 180.0);
    let pos = |list: &[String], name: &str| {
        list.iter()
            .position(|n| n == name)
            .map(|i| PAD + row * i as f64 + row / 2.0)
    };
    let most = flows.iter().map(|f| f.requests).max().unwrap_or(1).max(1) as f64;
    let mut out = format!(
        "<svg id=\"flow-graph\" class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" \
         aria-label=\"which identity reached which resource\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    for f in flows {
        let (Some(y1), Some(y2)) = (pos(identities, &f.from), pos(resources, &f.to)) else {
            continue;
        };
        let width = 1.0 + 5.0 * (f.requests as f64 / most);
        let class = if f.denied > 0 { "flow denied" } else { "flow" };
        let _ = write!(
            out,
            "<line class=\"{class}\" x1=\"{left}\" y1=\"{y1:.1}\" x2=\"{right}\" y2=\"{y2:.1}\" stroke-width=\"{width:.1}\">\
             <title>{} → {}: {} requests, {} denied, {}</title></line>",
            esc(&f.from),
            esc(&f.to),
            f.requests,
            f.denied,
            esc(&f.classification)
        );
    }
    for (i, name) in identities.iter().enumerate() {
        let y = PAD + row * i as f64 + row / 2.0;
        let _ = write!(
            out,
            "<circle class=\"node identity\" cx=\"{left}\" cy=\"{y:.1}\" r=\"6\"/>\
             <text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 10.0,
            y + 4.0,
            esc(name)
        );
    }
    for (i, name) in resources.iter().enumerate() {
        let y = PAD + row * i as f64 + row / 2.0;
        let _ = write!(
            out,
            "<rect class=\"node resource\" x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\"/>\
             <text class=\"label\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            right - 6.0,
            y - 6.0,
            right + 12.0,
            y + 4.0,
            esc(name)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_escape_names_and_draw_every_flow() {
        let svg = flow_graph(
            &["a<b".to_string()],
            &["bank".to_string()],
            &[Flow {
                from: "a<b".into(),
                to: "bank".into(),
                requests: 3,
                denied: 1,
                classification: "confidential".into(),
            }],
        );
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        assert_eq!(svg.matches("<line class=\"flow denied\"").count(), 1);
        let chart = risk_timeline(&[
            RiskPoint {
                agent: "x".into(),
                time_ms: 1,
                risk: 0.2,
                alert: false,
            },
            RiskPoint {
                agent: "x".into(),
                time_ms: 2,
                risk: 0.9,
                alert: true,
            },
        ]);
        assert_eq!(chart.matches("<polyline").count(), 1);
        assert_eq!(chart.matches("<circle").count(), 1);
    }
}
