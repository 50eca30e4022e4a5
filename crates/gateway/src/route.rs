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

    /// A route with a longer prefix than `chosen`'s that `path` matches when
    /// letter case is ignored: `/api/ADMIN/x` when `/api` and `/api/admin`
    /// exist. An upstream that ignores case would serve it as the deeper
    /// route, so the caller refuses such a path.
    pub fn case_variant(&self, path: &str, chosen: &RouteConfig) -> Option<&Arc<RouteConfig>> {
        let floor = chosen.path_prefix.len();
        self.routes
            .iter()
            .take_while(|r| r.path_prefix.len() > floor)
            .find(|r| {
                let prefix = r.path_prefix.as_str();
                path.get(..prefix.len()).is_some_and(|head| {
                    head.eq_ignore_ascii_case(prefix)
                        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
                })
            })
    }

    /// All routes.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteConfig>> {
        self.routes.iter()
    }
}

#[cfg(test)]
impl RouteTable {
    /// A table of plain HTTP routes on the demo upstream, named `r` plus the
    /// prefix with `/` as `_`.
    pub(crate) fn for_tests(prefixes: &[&str]) -> RouteTable {
        let routes: Vec<_> = prefixes
            .iter()
            .map(|p| RouteConfig {
                name: format!("r{}", p.replace('/', "_")),
                kind: crate::config::RouteKind::Http,
                path_prefix: p.to_string(),
                upstream: crate::config::Upstream::BuiltinDemo,
                classification: portcullis_core::Classification::Public,
                guard: Default::default(),
                credential: None,
                capture: None,
                audit_fail_open: false,
                durability: None,
                llm: None,
                owner: String::new(),
                tags: Vec::new(),
                datasets: Vec::new(),
                tool_datasets: Default::default(),
                sandbox: None,
            })
            .collect();
        RouteTable::new(&routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(prefixes: &[&str]) -> RouteTable {
        RouteTable::for_tests(prefixes)
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

    #[test]
    fn case_variants_of_deeper_routes() {
        let t = table(&["/", "/api", "/api/admin"]);
        let variant = |path: &str| {
            let (route, _) = t.lookup(path).unwrap();
            t.case_variant(path, route).map(|r| r.path_prefix.clone())
        };
        assert_eq!(variant("/api/ADMIN/x").as_deref(), Some("/api/admin"));
        assert_eq!(variant("/API/admin").as_deref(), Some("/api/admin"));
        assert_eq!(variant("/Api/x").as_deref(), Some("/api"));
        assert_eq!(variant("/api/admin/X"), None);
        assert_eq!(variant("/api/adminx"), None);
        assert_eq!(variant("/api/x"), None);
        assert_eq!(variant("/other"), None);
    }
}
