//! `vmm/api/openapi.yaml` against the code, so that neither drifts: the documented operations are
//! the router's route table; each operation's bodies are the schemas of the types the router
//! parses and answers with; every schema's example parses into its type and serializes back to
//! itself, naming every property; and what a request schema requires, allows and bounds is what
//! the type accepts.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use vmm::api::control::ROUTES;
use vmm::api::model::{
    ActionRequest, ApiError, BalloonDeviceConfig, BalloonStats, BalloonStatsUpdate, BalloonUpdate,
    GcmaInfo, GcmaRequests, GrantInfo, PoolInfo, VmExits, VmInfo,
};
use yaml_rust2::{Yaml, YamlLoader};

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => json!(s.parse::<f64>().expect("a YAML real")),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let k = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("unexpected key {other:?}"),
                    };
                    (k, to_json(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML node {other:?}"),
    }
}

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("vmm/api/openapi.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("openapi.yaml is YAML");
    to_json(&docs[0])
}

fn schema<'a>(spec: &'a Value, name: &str) -> &'a Value {
    let s = &spec["components"]["schemas"][name];
    assert!(s.is_object(), "no schema {name}");
    s
}

fn ref_name(v: &Value) -> Option<&str> {
    v["$ref"].as_str()?.rsplit('/').next()
}

/// Parses a JSON value as `T` and serializes it back.
type Codec = fn(&Value) -> Result<Value, String>;

fn codec<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

/// Request bodies: operation, schema, the type the router parses.
const REQUESTS: &[(&str, &str, Codec)] = &[
    ("putBalloon", "Balloon", codec::<BalloonDeviceConfig>),
    ("patchBalloon", "BalloonUpdate", codec::<BalloonUpdate>),
    (
        "patchBalloonStatsInterval",
        "BalloonStatsUpdate",
        codec::<BalloonStatsUpdate>,
    ),
    ("createSyncAction", "ActionRequest", codec::<ActionRequest>),
];

/// `200` bodies: operation, schema, the type the router answers with.
const RESPONSES: &[(&str, &str, Codec)] = &[
    ("describeVm", "VmInfo", codec::<VmInfo>),
    ("describeGcma", "GcmaInfo", codec::<GcmaInfo>),
    (
        "describeBalloonConfig",
        "Balloon",
        codec::<BalloonDeviceConfig>,
    ),
    (
        "describeBalloonStats",
        "BalloonStats",
        codec::<BalloonStats>,
    ),
];

/// Schemas used only inside others, and the error body.
const OTHERS: &[(&str, Codec)] = &[
    ("Error", codec::<ApiError>),
    ("VmExits", codec::<VmExits>),
    ("GrantInfo", codec::<GrantInfo>),
    ("GcmaRequests", codec::<GcmaRequests>),
    ("PoolInfo", codec::<PoolInfo>),
];

const METHODS: [&str; 8] = [
    "get", "put", "patch", "post", "delete", "head", "options", "trace",
];

/// Every operation in the document: (METHOD, path, operationId, operation).
fn operations(spec: &Value) -> Vec<(String, String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: unknown key {method}"
            );
            let id = op["operationId"].as_str().expect("operationId").to_string();
            out.push((method.to_uppercase(), path.clone(), id, op.clone()));
        }
    }
    out
}

#[test]
fn documented_operations_are_the_route_table() {
    let spec = spec();
    let documented: BTreeSet<(String, String, String)> = operations(&spec)
        .into_iter()
        .map(|(m, p, id, _)| (m, p, id))
        .collect();
    let routed: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|(m, p, _, id)| (m.to_string(), p.to_string(), id.to_string()))
        .collect();
    assert_eq!(documented, routed);
}

#[test]
fn operations_use_the_schemas_of_the_code() {
    let spec = spec();
    for (method, path, id, op) in operations(&spec) {
        let req_ref = ref_name(&op["requestBody"]["content"]["application/json"]["schema"]);
        let want = REQUESTS.iter().find(|r| r.0 == id).map(|r| r.1);
        assert_eq!(req_ref, want, "{method} {path}: request body");
        if want.is_some() {
            assert_eq!(op["requestBody"]["required"], true, "{id}");
        }
        let ok = &op["responses"]["200"];
        let want = RESPONSES.iter().find(|r| r.0 == id).map(|r| r.1);
        match want {
            Some(name) => assert_eq!(
                ref_name(&ok["content"]["application/json"]["schema"]),
                Some(name),
                "{id}: 200 body"
            ),
            None => {
                assert!(ok.is_null(), "{id} answers 204, not 200");
                let no = &op["responses"]["204"];
                assert!(
                    no.is_object() && no["content"].is_null(),
                    "{id}: 204 without a body"
                );
            }
        }
        // Every error is documented with the error shape.
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.contains_key("default"),
            "{id}: no default response"
        );
        for (code, r) in responses {
            if code.starts_with('2') {
                continue;
            }
            let r = match ref_name(r) {
                Some(name) => &spec["components"]["responses"][name],
                None => r,
            };
            assert_eq!(
                ref_name(&r["content"]["application/json"]["schema"]),
                Some("Error"),
                "{id} {code}"
            );
        }
    }
}

#[test]
fn examples_parse_into_the_types_and_name_every_property() {
    let spec = spec();
    let all = REQUESTS
        .iter()
        .chain(RESPONSES)
        .map(|(_, s, c)| (*s, *c))
        .chain(OTHERS.iter().copied());
    let mut seen = BTreeSet::new();
    for (name, codec) in all {
        seen.insert(name);
        let s = schema(&spec, name);
        let example = &s["example"];
        assert!(example.is_object(), "{name} has no example");
        let back = codec(example).unwrap_or_else(|e| panic!("{name} example: {e}"));
        assert_eq!(&back, example, "{name}: the example does not round-trip");
        let props: BTreeSet<&String> = s["properties"].as_object().unwrap().keys().collect();
        let keys: BTreeSet<&String> = example.as_object().unwrap().keys().collect();
        assert_eq!(
            props, keys,
            "{name}: properties and the example's fields differ"
        );
    }
    let documented: BTreeSet<&str> = spec["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        documented, seen,
        "schemas without a type behind them, or the reverse"
    );
}

fn with(example: &Value, key: &str, v: Option<Value>) -> Value {
    let mut m: Map<String, Value> = example.as_object().unwrap().clone();
    match v {
        Some(v) => m.insert(key.to_string(), v),
        None => m.remove(key),
    };
    Value::Object(m)
}

#[test]
fn request_schemas_require_allow_and_bound_what_the_code_does() {
    let spec = spec();
    for (_, name, codec) in REQUESTS {
        let s = schema(&spec, name);
        let example = &s["example"];
        let required: Vec<&str> = s["required"]
            .as_array()
            .map_or(vec![], |r| r.iter().map(|v| v.as_str().unwrap()).collect());
        assert_eq!(s["additionalProperties"], false, "{name}");
        assert!(
            codec(&with(example, "unknown_field", Some(json!(1)))).is_err(),
            "{name} accepts unknown fields"
        );
        for (prop, p) in s["properties"].as_object().unwrap() {
            let dropped = codec(&with(example, prop, None));
            assert_eq!(
                dropped.is_err(),
                required.contains(&prop.as_str()),
                "{name}.{prop}: required in the document and in the code differ"
            );
            let bad_type = if p["type"] == "string" {
                json!(1)
            } else {
                json!("x")
            };
            assert!(
                codec(&with(example, prop, Some(bad_type))).is_err(),
                "{name}.{prop}"
            );
            if p["type"] == "integer" {
                let (min, max) = (
                    p["minimum"].as_i64().unwrap(),
                    p["maximum"].as_i64().unwrap(),
                );
                for (v, ok) in [(min, true), (max, true), (min - 1, false), (max + 1, false)] {
                    assert_eq!(
                        codec(&with(example, prop, Some(json!(v)))).is_ok(),
                        ok,
                        "{name}.{prop} = {v}"
                    );
                }
                assert!(codec(&with(example, prop, Some(json!(1.5)))).is_err());
            }
            if let Some(values) = p["enum"].as_array() {
                for v in values {
                    assert!(codec(&with(example, prop, Some(v.clone()))).is_ok());
                }
                assert!(codec(&with(example, prop, Some(json!("not-in-enum")))).is_err());
            }
        }
    }
}
