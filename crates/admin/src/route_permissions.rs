//! The ONE table of what every admin route needs. `require_admin` looks the
//! matched route up here before any handler runs: a route that is not in the
//! table is refused to every credential, owners included (default deny), and
//! a unit test reads this crate's sources and fails when a route registered
//! there is missing from the table, so a new route cannot ship unmapped.

use crate::roles::Permission::{self, *};

/// The prefix every authenticated admin route is nested under.
pub const API_PREFIX: &str = "/admin/v1";

/// `(method, route as registered, permission)` for every route under
/// [`API_PREFIX`]. The route is the pattern given to `.route`, not a
/// concrete path.
pub const ROUTE_PERMISSIONS: &[(&str, &str, Permission)] = &[
    // Agents and the identities agents act with.
    ("GET", "/agents", Read),
    ("POST", "/agents", ManageAgents),
    ("GET", "/agents/{name}", Read),
    ("POST", "/agents/{name}/revoke", ManageAgents),
    ("POST", "/agents/{name}/certificates", ManageAgents),
    ("POST", "/agents/{name}/keys", ManageAgents),
    ("POST", "/agents/{name}/posture", ManageAgents),
    ("POST", "/agents/{name}/release", ManageAgents),
    ("POST", "/tokens/revoke", ManageAgents),
    ("GET", "/tokens/revoked", Read),
    ("POST", "/users/disable", ManageAgents),
    ("POST", "/users/enable", ManageAgents),
    ("GET", "/users/disabled", Read),
    ("GET", "/oauth/clients", Read),
    ("POST", "/oauth/clients/{client_id}/revoke", ManageAgents),
    // Admin identities: human admins (TOTP) and credentials (tokens).
    ("GET", "/admins", Read),
    ("POST", "/admins", ManageAdmins),
    ("DELETE", "/admins/{name}", ManageAdmins),
    ("GET", "/passkeys", Read),
    ("DELETE", "/passkeys/{id}", ManageAdmins),
    ("GET", "/openapi.json", Read),
    ("GET", "/admin-tokens", Read),
    ("POST", "/admin-tokens", ManageAdmins),
    ("POST", "/admin-tokens/{name}/rotate", ManageAdmins),
    ("POST", "/admin-tokens/{name}/revoke", ManageAdmins),
    ("POST", "/admin-certificates", ManageAdmins),
    ("GET", "/session", Session),
    ("POST", "/session/step-up", Session),
    ("DELETE", "/session/step-up", Session),
    // The audit log.
    ("GET", "/audit", Read),
    ("GET", "/audit/checkpoint", Read),
    ("POST", "/audit/checkpoint", SignCheckpoint),
    ("GET", "/audit/checkpoints", Read),
    ("GET", "/audit/records/{id}", Read),
    ("GET", "/audit/proof/inclusion", Read),
    ("GET", "/audit/proof/consistency", Read),
    ("GET", "/audit/export", Read),
    ("GET", "/inventory", Read),
    // Behavioral analytics.
    ("GET", "/alerts", Read),
    ("GET", "/alerts/{id}", Read),
    ("POST", "/alerts/{id}/resolve", ResolveAlerts),
    // Red-team scorecards: recording one is security operations' work,
    // like resolving an alert; reading them is reading.
    ("GET", "/redteam/runs", Read),
    ("POST", "/redteam/runs", ResolveAlerts),
    ("GET", "/redteam/runs/{run_id}", Read),
    // Approvals, grants, break-glass.
    ("GET", "/approvals", Read),
    ("GET", "/approvals/{id}", Read),
    ("POST", "/approvals/{id}/approve", Decide),
    ("POST", "/approvals/{id}/deny", Decide),
    ("GET", "/grants", Read),
    ("POST", "/grants/{id}/revoke", Decide),
    ("POST", "/breakglass", Decide),
    // Policies. Explain and what-if only analyse: reading.
    ("GET", "/policies", Read),
    ("POST", "/policies", AuthorPolicy),
    ("POST", "/policies/rollback", AuthorPolicy),
    ("POST", "/policies/explain", Read),
    ("POST", "/policies/whatif", Read),
    ("GET", "/policies/shadow", Read),
    ("DELETE", "/policies/shadow", AuthorPolicy),
    ("GET", "/policies/{version}", Read),
    // MCP tools.
    ("GET", "/tools", Read),
    ("POST", "/tools/approve", ManageTools),
    // The model and dataset registries.
    ("GET", "/models", Read),
    ("POST", "/models", ManageGovernance),
    ("GET", "/models/{name}/{version}", Read),
    ("POST", "/models/{name}/{version}/{step}", ManageGovernance),
    ("GET", "/datasets", Read),
    ("POST", "/datasets", ManageGovernance),
    ("GET", "/datasets/report", Read),
    ("GET", "/datasets/{name}", Read),
    ("POST", "/datasets/{name}/{step}", ManageGovernance),
    // The vault. Listings and `show` carry metadata, never values.
    ("GET", "/secrets", Read),
    ("POST", "/secrets", ManageSecrets),
    ("GET", "/secrets/{name}", Read),
    ("DELETE", "/secrets/{name}", ManageSecrets),
    ("POST", "/secrets/{name}/rotate", ManageSecrets),
    ("POST", "/secrets/{name}/settings", ManageSecrets),
    ("GET", "/vault", Read),
    ("POST", "/vault/rekey", ManageVault),
    ("GET", "/transit/keys", Read),
    ("POST", "/transit/keys", ManageSecrets),
    ("POST", "/transit/keys/{name}/rotate", ManageSecrets),
    ("POST", "/transit/keys/{name}/export", ManageVault),
    ("POST", "/transit/encrypt", UseTransit),
    ("POST", "/transit/decrypt", UseTransit),
    ("POST", "/transit/rewrap", UseTransit),
    ("GET", "/captures/{request_id}", ReadCaptures),
];

/// The permission `method` on the matched route needs; `None` (refuse) for
/// a route the table does not know. `matched` may carry the API prefix.
pub fn required(method: &str, matched: &str) -> Option<Permission> {
    let route = matched.strip_prefix(API_PREFIX).unwrap_or(matched);
    ROUTE_PERMISSIONS
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, p)| *p)
}

/// Whether the table maps the route for some method.
pub fn is_known(matched: &str) -> bool {
    let route = matched.strip_prefix(API_PREFIX).unwrap_or(matched);
    ROUTE_PERMISSIONS.iter().any(|(_, r, _)| *r == route)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes outside [`API_PREFIX`], served without an admin credential.
    const PUBLIC_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

    /// Every `(method, route)` registered in this crate's
    /// sources, found by reading them (axum cannot list a router's routes).
    fn registered_routes() -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    found.extend(routes_in(&text));
                }
            }
        }
        found
    }

    /// What registers a route; spelled in two parts so that this file does
    /// not register one in the scanner's eyes.
    const NEEDLE: &str = concat!(".", "route", "(");

    /// The routes of one source text: for each registration, the first
    /// string literal, and each method call up to the closing parenthesis.
    fn routes_in(text: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(NEEDLE) {
            let args = &rest[at + NEEDLE.len()..];
            let mut depth = 1usize;
            let mut end = args.len();
            for (i, c) in args.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let args = &args[..end];
            rest = &rest[at + NEEDLE.len() + end..];
            let Some(open) = args.find('"') else { continue };
            let Some(close) = args[open + 1..].find('"') else {
                continue;
            };
            let route = &args[open + 1..open + 1 + close];
            let calls = &args[open + 2 + close..];
            for method in ["get", "post", "put", "patch", "delete"] {
                let needle = format!("{method}(");
                let mut from = 0;
                while let Some(i) = calls[from..].find(&needle) {
                    let i = from + i;
                    let before = calls[..i].chars().last().unwrap_or(' ');
                    if !(before.is_alphanumeric() || before == '_') {
                        out.push((method.to_ascii_uppercase(), route.to_string()));
                    }
                    from = i + needle.len();
                }
            }
        }
        out
    }

    #[test]
    fn the_scanner_reads_chained_and_qualified_methods() {
        let text = r#".ROUTE("/a", get(x).post(crate::m::y)).ROUTE(
            "/b/{id}",
            axum::routing::delete(z),
        ).ROUTE("/c", get(target_get))"#
            .replace(".ROUTE(", NEEDLE);
        assert_eq!(
            routes_in(&text),
            [
                ("GET".to_string(), "/a".to_string()),
                ("POST".to_string(), "/a".to_string()),
                ("DELETE".to_string(), "/b/{id}".to_string()),
                ("GET".to_string(), "/c".to_string()),
            ]
        );
    }

    #[test]
    fn every_registered_route_has_exactly_one_permission() {
        let routes = registered_routes();
        assert!(routes.len() > 50, "the scanner found {}", routes.len());
        for (method, route) in &routes {
            // The console's pages authorise their session themselves
            // (`console::session::may`) and act only through this API.
            if PUBLIC_ROUTES.contains(&route.as_str()) || route.starts_with("/console") {
                continue;
            }
            assert!(
                required(method, route).is_some(),
                "{method} {route} has no permission in ROUTE_PERMISSIONS: add it (default deny)"
            );
        }
        // No stale or doubled rows either.
        for (i, (m, r, _)) in ROUTE_PERMISSIONS.iter().enumerate() {
            assert!(
                routes.iter().any(|(rm, rr)| rm == m && rr == r),
                "{m} {r} is in the table but no route registers it"
            );
            assert!(
                !ROUTE_PERMISSIONS[i + 1..]
                    .iter()
                    .any(|(m2, r2, _)| m2 == m && r2 == r),
                "{m} {r} is mapped twice"
            );
        }
    }

    #[test]
    fn unknown_routes_need_a_permission_nobody_has() {
        assert_eq!(required("GET", "/admin/v1/agents"), Some(Read));
        assert_eq!(required("GET", "/agents"), Some(Read));
        assert_eq!(required("PUT", "/agents"), None);
        assert_eq!(required("GET", "/admin/v1/new-thing"), None);
    }
}
