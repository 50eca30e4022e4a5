//! `portcullis bom`: the AI bill of materials of a config and a state
//! directory, validated against the official CycloneDX 1.6 JSON schema (the
//! one bundled with `cyclonedx-python-lib`, strict mode). Skips the schema
//! check visibly when that package is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::process::Command;

use portcullis_store::testing::TestDb;
use portcullis_store::{DatasetRow, Lifecycle, McpToolRow, ModelRow, Store};
use serde_json::Value;

const VALIDATE: &str = r#"
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(sys.stdin.read())
print(error if error else "valid")
sys.exit(1 if error else 0)
"#;

fn cyclonedx_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import cyclonedx.validation.json, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: CycloneDX schema check: python3 with cyclonedx-python-lib[json-validation] is missing"
        );
    }
    ok
}

fn tool(route: &str, name: &str, seen: &str, approved: Option<&str>) -> McpToolRow {
    McpToolRow {
        route: route.into(),
        name: name.into(),
        approved_digest: approved.map(str::to_string),
        seen_digest: seen.into(),
        seen_definition: "{}".into(),
        findings: "[]".into(),
        first_seen_ms: 1,
        seen_ms: 2,
        approved_ms: approved.map(|_| 3),
        approved_by: approved.map(|_| "admin".to_string()),
    }
}

/// The routes the BOM lists: plain HTTP, an MCP server, an LLM route with
/// two models and two datasets.
fn routes() -> String {
    format!(
        "{}{}{}",
        support::route("api", "/api", "http://127.0.0.1:9/base", "internal"),
        "[[routes]]\nname = \"files\"\nkind = \"mcp\"\npath_prefix = \"/mcp/files\"\nupstream = \"http://127.0.0.1:9/mcp\"\nclassification = \"confidential\"\nowner = \"data-team\"\ntags = [\"pii\"]\n",
        "[[routes]]\nname = \"llm\"\nkind = \"llm\"\npath_prefix = \"/llm\"\nupstream = \"https://api.example:443\"\nclassification = \"restricted\"\napi_key_env = \"BOM_LLM_KEY\"\ndatasets = [\"claims\", \"unlisted\"]\n\
         [[routes.models]]\nname = \"gpt-4o\"\nversion = \"2024-08-06\"\nstatus = \"approved\"\nregistry = \"gpt-4o@2024-08-06\"\n\
         [[routes.models]]\nname = \"meta-llama/Llama-3-8B\"\nstatus = \"preview\"\n",
    )
}

/// The tools the gateway has seen, as its MCP adapter stores them, and the
/// registries: the model's entry and one of the two datasets.
async fn seed(store: &Store) {
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    store
        .upsert_mcp_tool(&tool("files", "read_file", &a, Some(&a)))
        .await
        .unwrap();
    store
        .upsert_mcp_tool(&tool("files", "write_file", &b, Some(&a)))
        .await
        .unwrap();
    store
        .upsert_mcp_tool(&tool("files", "delete_file", &b, None))
        .await
        .unwrap();
    store
        .register_model(&ModelRow {
            name: "gpt-4o".into(),
            version: "2024-08-06".into(),
            digest: format!("sha256:{}", "c".repeat(64)),
            lifecycle: Lifecycle::Approved,
            verified: true,
            verified_key: Some("release".into()),
            signature: None,
            provenance: Some(
                r#"{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"https://slsa.dev/provenance/v1"}"#.into(),
            ),
            eval: None,
            registered_by: "admin".into(),
            registered_ms: 1,
            changed_by: "admin".into(),
            changed_ms: 1,
        })
        .await
        .unwrap();
    store
        .register_dataset(&DatasetRow {
            name: "claims".into(),
            owner: "risk-team".into(),
            classification: "confidential".into(),
            source: "claims-db export".into(),
            licence: "internal".into(),
            collected: "2026-01-31".into(),
            consent_basis: "contract".into(),
            retention_days: 90,
            purposes: vec!["fraud-detection".into()],
            lifecycle: Lifecycle::Approved,
            registered_by: "admin".into(),
            registered_ms: 1,
            changed_by: "admin".into(),
            changed_ms: 1,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bom_lists_routes_models_and_tools_as_valid_cyclonedx_1_6() {
    let dir = tempfile::tempdir().unwrap();
    let routes = routes();
    let config = support::config(dir.path(), &routes, "");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let store = Store::open_sqlite(&state.join("portcullis.db"))
        .await
        .unwrap();
    seed(&store).await;
    store.close().await;

    let out = Command::new(support::BIN)
        .arg("bom")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_bom(&String::from_utf8(out.stdout).unwrap());
}

/// The BOM of [`routes`] over the state [`seed`] wrote is all it should be,
/// and valid CycloneDX 1.6.
fn check_bom(text: &str) {
    let bom: Value = serde_json::from_str(text).unwrap();
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.6");

    let services = bom["services"].as_array().unwrap();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "files", "llm"]);
    assert_eq!(services[0]["endpoints"][0], "http://127.0.0.1:9/base");
    assert_eq!(services[1]["data"][0]["classification"], "confidential");
    let props = |v: &Value| -> Vec<(String, String)> {
        v["properties"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert!(props(&services[1]).contains(&("portcullis:owner".into(), "data-team".into())));
    // Tools, nested in their server, with their pin state.
    let tools = services[1]["services"].as_array().unwrap();
    let pin = |name: &str| {
        let t = tools.iter().find(|t| t["name"] == name).unwrap();
        props(t)
            .into_iter()
            .find(|(k, _)| k == "portcullis:pin")
            .unwrap()
            .1
    };
    assert_eq!(pin("read_file"), "approved");
    assert_eq!(pin("write_file"), "changed");
    assert_eq!(pin("delete_file"), "pending");
    // Models, as ML model components the LLM route depends on.
    let components = bom["components"].as_array().unwrap();
    let models: Vec<(&str, Option<&str>)> = components
        .iter()
        .filter(|c| c["type"] == "machine-learning-model")
        .map(|c| (c["name"].as_str().unwrap(), c["version"].as_str()))
        .collect();
    assert_eq!(
        models,
        [
            ("gpt-4o", Some("2024-08-06")),
            ("meta-llama/Llama-3-8B", None)
        ]
    );
    // The registry's facts on the model that names an entry: its hash,
    // lifecycle, verification and provenance type.
    let gpt = &components[0];
    assert_eq!(gpt["hashes"][0]["alg"], "SHA-256");
    assert_eq!(gpt["hashes"][0]["content"], "c".repeat(64));
    for fact in [
        ("portcullis:lifecycle", "approved"),
        ("portcullis:verified", "true"),
        (
            "portcullis:provenance_predicate_type",
            "https://slsa.dev/provenance/v1",
        ),
    ] {
        assert!(
            props(gpt).contains(&(fact.0.into(), fact.1.into())),
            "{gpt}"
        );
    }
    // Datasets, as data components with their governance; the one not
    // registered says so.
    let datasets: Vec<&Value> = components.iter().filter(|c| c["type"] == "data").collect();
    assert_eq!(datasets.len(), 2);
    assert_eq!(
        datasets[0]["data"][0]["governance"]["owners"][0]["organization"]["name"],
        "risk-team"
    );
    assert!(props(datasets[1]).contains(&("portcullis:registered".into(), "false".into())));
    // Lineage: the route depends on its models and its datasets.
    assert_eq!(bom["dependencies"][0]["ref"], "route:llm");
    assert_eq!(
        bom["dependencies"][0]["dependsOn"],
        serde_json::json!([
            "model:llm/gpt-4o",
            "model:llm/meta-llama/Llama-3-8B",
            "dataset:claims",
            "dataset:unlisted"
        ])
    );
    // The API key's source is named, never its value or variable.
    assert!(props(&services[2]).contains(&("portcullis:credential".into(), "api_key".into())));
    assert!(!text.contains("BOM_LLM_KEY"));

    if cyclonedx_available() {
        let v = support::run_with_stdin(
            Command::new("python3").args(["-c", VALIDATE]),
            text.as_bytes(),
        );
        assert!(
            v.status.success(),
            "not valid CycloneDX 1.6: {}",
            String::from_utf8_lossy(&v.stdout)
        );
    }
}

/// In cluster mode the state is in the shared PostgreSQL database: `bom`
/// reads it (read-only sessions) from `[store] url` or from
/// `PORTCULLIS_STORE_URL`, with no state directory, and lists the same.
#[tokio::test(flavor = "multi_thread")]
async fn bom_reads_a_clusters_postgresql_store() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.url();
    let store = db.open().await;
    seed(&store).await;
    store.close().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = routes();
    // From the config file's `[store] url` …
    let with_url = support::config(
        dir.path(),
        &format!("{routes}[store]\nurl = \"{url}\"\n"),
        "",
    );
    let bom = |config: &std::path::Path, env: Option<&str>| {
        let mut cmd = Command::new(support::BIN);
        cmd.arg("bom").arg("--config").arg(config);
        cmd.env_remove("PORTCULLIS_STORE_URL");
        if let Some(url) = env {
            cmd.env("PORTCULLIS_STORE_URL", url);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    check_bom(&bom(&with_url, None));
    // … or from the variable, which wins over the file as for `serve`.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = support::config(plain_dir.path(), &routes, "");
    check_bom(&bom(&plain, Some(&url)));
    // Read-only: a database `serve` has not migrated is refused, not migrated.
    let empty = TestDb::postgres().await.unwrap();
    let mut cmd = Command::new(support::BIN);
    let out = cmd
        .arg("bom")
        .arg("--config")
        .arg(&plain)
        .env("PORTCULLIS_STORE_URL", empty.url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot open the PostgreSQL store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
