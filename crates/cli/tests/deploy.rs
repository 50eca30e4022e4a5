//! The Kubernetes manifests under `deploy/kubernetes/` (issue 18): every
//! file parses, the kustomization lists them all, the pieces refer to one
//! another by the right names, and the probes name real routes on the real
//! port: the ConfigMap's configuration is started as a real replica on
//! PostgreSQL (listeners moved to ephemeral ports) and each probe path is
//! requested on its admin listener.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use portcullis_store::testing::TestDb;
use serde::Deserialize;
use serde_json::Value;
use support::cluster::SHARED_FILES;
use support::*;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// Every YAML document of every file in the directory, by file name.
fn documents() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// The one document of `kind` (named `name` when given).
fn find<'d>(docs: &'d [(String, Value)], kind: &str, name: Option<&str>) -> &'d Value {
    let found: Vec<_> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .collect();
    assert_eq!(found.len(), 1, "{kind} {name:?}: {found:?}");
    found[0]
}

#[test]
fn every_manifest_parses_and_the_pieces_refer_to_one_another() {
    let docs = documents();
    for (file, doc) in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].is_string(), "{file}: no `{field}`");
        }
        if doc["kind"] != "Kustomization" {
            assert!(doc["metadata"]["name"].is_string(), "{file}: no name");
        }
    }
    // The kustomization applies every other file.
    let kustomization = find(&docs, "Kustomization", None);
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files: BTreeSet<&str> = docs
        .iter()
        .map(|(f, _)| f.as_str())
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);

    let deployment = find(&docs, "Deployment", Some("portcullis"));
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_u64().unwrap() >= 2);
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(spec["selector"]["matchLabels"], *labels);

    // A PodDisruptionBudget and the Services select these pods.
    let pdb = find(&docs, "PodDisruptionBudget", None);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *labels);
    assert!(pdb["spec"]["maxUnavailable"].as_u64().unwrap() >= 1);
    for (_, service) in docs.iter().filter(|(_, d)| d["kind"] == "Service") {
        assert_eq!(service["spec"]["selector"], *labels);
    }

    // The database: a CloudNativePG cluster whose generated app Secret
    // (`<name>-app`, key `uri`) is what PORTCULLIS_STORE_URL reads.
    let db = find(&docs, "Cluster", None);
    assert_eq!(db["apiVersion"], "postgresql.cnpg.io/v1");
    assert!(db["spec"]["instances"].as_u64().unwrap() >= 2);
    let container = &pod["containers"][0];
    let env = |name: &str| -> &Value {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    let store_url = &env("PORTCULLIS_STORE_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(
        store_url["name"].as_str().unwrap(),
        format!("{}-app", db["metadata"]["name"].as_str().unwrap())
    );
    assert_eq!(store_url["key"], "uri");

    // The key material: the Secret holds every shared file and the KEK, the
    // init container copies every shared file, the KEK is mounted where
    // PORTCULLIS_KEK_FILE points.
    let secret = find(&docs, "Secret", Some("portcullis-keys"));
    let keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut wanted: BTreeSet<&str> = SHARED_FILES.into_iter().collect();
    wanted.insert("kek");
    assert_eq!(keys, wanted);
    let copy = pod["initContainers"][0]["command"].to_string();
    for file in SHARED_FILES {
        assert!(copy.contains(&format!("/keys/{file}")), "{file}: {copy}");
    }
    let kek = env("PORTCULLIS_KEK_FILE")["value"].as_str().unwrap();
    let kek_dir = Path::new(kek).parent().unwrap().to_str().unwrap();
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == kek_dir),
        "nothing mounted at {kek_dir}"
    );
}

/// Each probe as (kind, path, port name).
fn probes(container: &Value) -> Vec<(String, String, String)> {
    ["startupProbe", "livenessProbe", "readinessProbe"]
        .into_iter()
        .filter(|k| !container[*k].is_null())
        .map(|k| {
            let get = &container[k]["httpGet"];
            assert_eq!(get["scheme"], "HTTPS", "{k}: the admin listener is TLS");
            (
                k.to_string(),
                get["path"].as_str().unwrap().to_string(),
                get["port"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_probes_answer_on_a_replica_started_from_the_configmap() {
    let docs = documents();
    let deployment = find(&docs, "Deployment", Some("portcullis"));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let probes = probes(container);
    assert!(
        probes.iter().any(|(k, ..)| k == "readinessProbe")
            && probes.iter().any(|(k, ..)| k == "livenessProbe")
    );
    // The probes' port is the container port the config's admin listener
    // binds.
    let ports = container["ports"].as_array().unwrap();
    let port_of = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    let config_text =
        find(&docs, "ConfigMap", Some("portcullis-config"))["data"]["portcullis.toml"]
            .as_str()
            .unwrap()
            .to_string();
    let config: toml::Value = toml::from_str(&config_text).unwrap();
    let listen_port = |section: &str| -> u64 {
        let listen = config[section]["listen"].as_str().unwrap();
        listen.rsplit_once(':').unwrap().1.parse().unwrap()
    };
    for (kind, _, port) in &probes {
        assert_eq!(port_of(port), listen_port("admin"), "{kind}");
    }
    assert_eq!(port_of("gateway"), listen_port("gateway"));

    // The same configuration, started for real on PostgreSQL (listeners on
    // ephemeral ports, as the tests never bind fixed ones).
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(&cfg, &config_text).unwrap();
    let url = db.url();
    let server = tokio::task::spawn_blocking(move || {
        Server::start_with_env(
            dir,
            Some(&cfg),
            &[
                ("PORTCULLIS_STORE_URL", url.as_str()),
                ("PORTCULLIS_GATEWAY_LISTEN", "127.0.0.1:0"),
                ("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0"),
            ],
        )
    })
    .await
    .unwrap();
    // Every file the init container copies is one a replica writes.
    for file in SHARED_FILES {
        assert!(server.state_dir().join(file).exists(), "{file}");
    }
    let http = client(&server.ca_pem(), None);
    for (kind, path, _) in &probes {
        let response = http
            .get(format!("https://{}{path}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{kind} {path}");
    }
    // A path the probes do not name is not found: the check above can fail.
    let missing = http
        .get(format!("https://{}/no-such-probe", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    drop(server);
}
