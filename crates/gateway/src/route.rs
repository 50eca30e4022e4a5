//! The route table: which route a request path takes.

use std::sync::Arc;

use crate::config::RouteConfig;

/// Routes, matched by the longest path prefix, segment-wise: `/demo` matches
/// `/demo` and `/demo/x`, never `/demox`.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    // Sorted by prefix length, longest first, so the first match is the best.
    routes: Vec<Arc<RouteConfig>>,
}

impl RouteTable {
    /// Builds the table.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut routes: Vec<_> = routes.iter().cloned().map(Arc::new).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        RouteTable { routes }
    }

    /// The route for `path`, and the rest of the path after its prefix (always
    /// starting with `/`).
    pub fn lookup<'p>(&self, path: &'p str) -> Option<(&Arc<RouteConfig>, &'p str)> {
        self.routes.iter().find_map(|route| {
            let prefix = route.path_prefix.as_str();
            if prefix == "/" {
                return Some((route, path));
            }
            let rest = path.strip_prefix(prefix)?;
            if rest.is_empty() {
                Some((route, "/"))
            } else if rest.starts_with('/') {
                Some((route, rest))
            } else {
                None
            }
        })
    }

    /// All routes.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteConfig>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteKind, Upstream};
    use portcullis_core::Classification;

    fn table(prefixes: &[&str]) -> RouteTable {
        let routes: Vec<_> = prefixes
            .iter()
            .map(|p| RouteConfig {
                name: format!("r{}", p.replace('/', "_")),
                kind: RouteKind::Http,
                path_prefix: p.to_string(),
                upstream: Upstream::BuiltinDemo,
                classification: Classification::Public,
                guard: Default::default(),
                credential: None,
                capture: None,
                audit_fail_open: false,
                llm: None,
            })
            .collect();
        RouteTable::new(&routes)
    }

    fn check(t: &RouteTable, path: &str, expect: Option<(&str, &str)>) {
        let got = t
            .lookup(path)
            .map(|(r, rest)| (r.path_prefix.as_str(), rest));
        assert_eq!(got, expect, "{path}");
    }

    #[test]
    fn longest_segment_prefix_wins() {
        let t = table(&["/demo", "/demo/admin", "/api"]);
        check(&t, "/demo", Some(("/demo", "/")));
        check(&t, "/demo/", Some(("/demo", "/")));
        check(&t, "/demo/x/y", Some(("/demo", "/x/y")));
        check(&t, "/demo/admin/z", Some(("/demo/admin", "/z")));
        check(&t, "/demox", None);
        check(&t, "/", None);
        check(&t, "/other", None);
        let root = table(&["/", "/api"]);
        check(&root, "/api/v1", Some(("/api", "/v1")));
        check(&root, "/x", Some(("/", "/x")));
    }
}
