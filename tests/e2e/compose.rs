//! `docker-compose.yml` checked without a compose client (CI has none): it parses; each
//! service is built or pulled; `depends_on` names services, healthy ones where it waits
//! for health; the Reddot services set only `REDDOT_*` variables that the config reads
//! and every one they require, and listen on the port they publish; published ports do
//! not collide; mounted files and build targets exist.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use reddot_shared::config::ENV_VARS;
use serde_yaml::{Mapping, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(workspace().join("docker-compose.yml"))?;
    let mut doc: Value = serde_yaml::from_str(&text)?;
    // `<<: *reddot-env` merges, as compose does.
    doc.apply_merge()?;
    Ok(doc)
}

fn services(doc: &Value) -> anyhow::Result<&Mapping> {
    doc["services"]
        .as_mapping()
        .ok_or_else(|| anyhow::anyhow!("no `services` mapping"))
}

fn name(key: &Value) -> &str {
    key.as_str().unwrap_or("?")
}

/// `environment` as a map, whichever of its two forms (mapping or `KEY=value` list).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .into(),
                };
                (name(k).to_owned(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (item.to_owned(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// `(host port, container port)` of each published port, short or long syntax.
fn published_ports(service: &Value) -> anyhow::Result<Vec<(u16, u16)>> {
    let Some(ports) = service["ports"].as_sequence() else {
        return Ok(Vec::new());
    };
    ports
        .iter()
        .map(|port| match port {
            Value::String(short) => {
                let parts: Vec<&str> = short.split('/').next().unwrap_or("").split(':').collect();
                let &[.., host, container] = parts.as_slice() else {
                    anyhow::bail!("`{short}` publishes no host port");
                };
                Ok((host.parse()?, container.parse()?))
            }
            Value::Mapping(long) => {
                let get = |key: &str| -> anyhow::Result<u16> {
                    match long.get(key) {
                        Some(Value::Number(n)) => Ok(u16::try_from(n.as_u64().unwrap_or(0))?),
                        Some(Value::String(s)) => Ok(s.parse()?),
                        other => anyhow::bail!("port `{key}`: {other:?}"),
                    }
                };
                Ok((get("published")?, get("target")?))
            }
            other => anyhow::bail!("unreadable port {other:?}"),
        })
        .collect()
}

/// `producer` or `gateway` for a Reddot service (by its Dockerfile target).
fn reddot_kind(service: &Value) -> Option<&str> {
    service["build"]["target"].as_str()
}

#[test]
fn every_service_is_built_or_pulled_and_waits_only_for_services_that_report_health()
-> anyhow::Result<()> {
    let doc = compose()?;
    let services = services(&doc)?;
    let dockerfile = std::fs::read_to_string(workspace().join("Dockerfile"))?;
    for (key, service) in services {
        let build = &service["build"];
        assert!(
            build.is_mapping() || build.is_string() || service["image"].is_string(),
            "{} has neither build nor image",
            name(key)
        );
        if let Some(target) = build["target"].as_str() {
            assert!(
                dockerfile
                    .lines()
                    .any(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {target}"))),
                "{}: the Dockerfile has no stage `{target}`",
                name(key)
            );
        }
        let depends_on: Vec<(&str, Option<&str>)> = match &service["depends_on"] {
            Value::Sequence(list) => list.iter().map(|d| (name(d), None)).collect(),
            Value::Mapping(map) => map
                .iter()
                .map(|(d, how)| (name(d), how["condition"].as_str()))
                .collect(),
            _ => Vec::new(),
        };
        for (dependency, condition) in depends_on {
            let target = services
                .get(dependency)
                .unwrap_or_else(|| panic!("{} depends on unknown {dependency}", name(key)));
            if condition == Some("service_healthy") {
                assert!(
                    target["healthcheck"]["test"].is_sequence()
                        || target["healthcheck"]["test"].is_string(),
                    "{} waits for {dependency} to be healthy, which has no healthcheck",
                    name(key)
                );
            }
        }
    }
    Ok(())
}

#[test]
fn reddot_services_set_only_variables_the_config_reads_and_all_it_requires() -> anyhow::Result<()> {
    let doc = compose()?;
    let known: BTreeSet<&str> = ENV_VARS.iter().copied().collect();
    let mut reddot = 0;
    for (key, service) in services(&doc)? {
        let env = environment(service);
        for var in env.keys().filter(|k| k.starts_with("REDDOT_")) {
            assert!(
                known.contains(var.as_str()),
                "{} sets {var}, which Reddot does not read",
                name(key)
            );
        }
        let Some(kind) = reddot_kind(service) else {
            continue;
        };
        reddot += 1;
        let mut required = vec![
            "REDDOT_JWT_SECRET",
            "REDDOT_DATABASE_URL",
            "REDDOT_AMQP_URL",
        ];
        if kind == "producer" {
            required.push("REDDOT_API_KEYS");
        }
        for var in required {
            assert!(
                env.get(var).is_some_and(|v| !v.is_empty()),
                "{} ({kind}) does not set {var}",
                name(key)
            );
        }
        // It listens on the port it publishes.
        let addr_var = if kind == "producer" {
            "REDDOT_PRODUCER_ADDR"
        } else {
            "REDDOT_GATEWAY_ADDR"
        };
        let listen: u16 = match env.get(addr_var) {
            Some(addr) => addr.rsplit(':').next().unwrap_or("").parse()?,
            None if kind == "producer" => 8080,
            None => 8081,
        };
        for (_, container) in published_ports(service)? {
            assert_eq!(
                container,
                listen,
                "{} publishes a port it does not listen on",
                name(key)
            );
        }
    }
    assert!(reddot >= 2, "no producer or gateway services found");
    Ok(())
}

#[test]
fn published_ports_do_not_collide_and_mounted_files_exist() -> anyhow::Result<()> {
    let doc = compose()?;
    let volumes = doc["volumes"].as_mapping().cloned().unwrap_or_default();
    let mut taken: BTreeMap<u16, String> = BTreeMap::new();
    for (key, service) in services(&doc)? {
        for (host, _) in published_ports(service)? {
            if let Some(other) = taken.insert(host, name(key).to_owned()) {
                panic!("{} and {other} both publish port {host}", name(key));
            }
        }
        for mount in service["volumes"].as_sequence().into_iter().flatten() {
            let source = match mount {
                Value::String(short) => short.split(':').next().unwrap_or(""),
                other => other["source"].as_str().unwrap_or(""),
            };
            if source.starts_with('/') {
                continue; // a path on the docker host, not in this repository
            }
            if source.starts_with('.') {
                assert!(
                    workspace().join(source).exists(),
                    "{} mounts {source}, which does not exist",
                    name(key)
                );
            } else {
                assert!(
                    volumes.contains_key(source),
                    "{} mounts the undeclared volume {source}",
                    name(key)
                );
            }
        }
    }
    Ok(())
}
