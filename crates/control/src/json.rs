//! Canonical JSON text, the one form digests of JSON values are taken over
//! (MCP tool pins, approval bindings of MCP calls).

use serde_json::Value;

/// Canonical JSON text: object keys sorted at every level, no whitespace.
/// Digests of tool definitions are taken over it, so a server that reorders
/// keys does not look like a changed tool.
pub fn canonical(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&map[k]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // With serde_json's default (sorted) maps, insertion order is already
    // sorted; sorting here keeps the digest stable if `preserve_order` is
    // ever enabled by another crate.
    sorted(value).to_string()
}
