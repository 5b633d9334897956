//! Command-line interface: the agent, and client commands over the HTTP API.

use crate::agent_cmd::{self, AgentArgs};
use crate::bench::{self, BenchArgs};
use crate::client::{ApiClient, encode_key};
use crate::sim_cmd::{self, SimCommand};
use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

/// Colony: membership, an authoritative store, service discovery and health checking, with
/// evidence on every answer. Speaks Consul's HTTP API.
#[derive(Debug, Parser)]
#[command(name = "colony", version, about, long_about = None)]
pub struct Cli {
    /// Address of the agent's HTTP API: where `agent` listens and client commands connect.
    #[arg(
        long,
        global = true,
        env = "COLONY_HTTP_ADDR",
        default_value = "127.0.0.1:8500"
    )]
    http_addr: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an agent.
    Agent(Box<AgentArgs>),
    /// Read and write the KV store.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Register, deregister and list this agent's services.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Query the service catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// List cluster members as this agent's gossip layer sees them (alive, suspect, failed,
    /// left), with incarnation, role and zone.
    Members,
    /// Run a command while holding a lock (like `consul lock`).
    Lock {
        /// KV prefix of the lock; the lock key is PREFIX/.lock.
        prefix: String,
        /// Session TTL while holding the lock.
        #[arg(long, default_value = "15s")]
        ttl: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print every change of a key or a service (a blocking-query loop). Stops on Ctrl-C.
    #[command(subcommand)]
    Watch(WatchCommand),
    /// Measure an agent with a built-in load generator.
    Bench(BenchArgs),
    /// Print a new random gossip encryption key (for `agent --encrypt`).
    Keygen,
    /// List or rotate this agent's gossip encryption keys (run against every agent: install
    /// the new key everywhere, then use it everywhere, then remove the old one).
    Keyring {
        /// List the keys (primary first).
        #[arg(long)]
        list: bool,
        /// Accept messages sealed with this key.
        #[arg(long, value_name = "KEY")]
        install: Option<String>,
        /// Seal outgoing messages with this (installed) key.
        #[arg(long = "use", value_name = "KEY")]
        use_key: Option<String>,
        /// Stop accepting this key (not the primary one).
        #[arg(long, value_name = "KEY")]
        remove: Option<String>,
    },
    /// Run a scenario on the deterministic simulator (the real protocol code on virtual time).
    #[command(subcommand)]
    Sim(SimCommand),
    /// Operate the cluster's servers.
    #[command(subcommand)]
    Operator(OperatorCommand),
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Inspect and change the Raft voters of a replicated cluster.
    #[command(subcommand)]
    Raft(RaftCommand),
}

#[derive(Debug, Subcommand)]
enum RaftCommand {
    /// List the voters, their addresses and which one leads.
    ListPeers,
    /// Remove a voter (a server that is gone for good); ask the leader's agent.
    RemovePeer {
        /// The server's ID (as list-peers shows it), node name, or RPC address.
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// The server's RPC address (IP:PORT).
        #[arg(long, value_name = "IP:PORT")]
        address: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print a key's value.
    Get {
        /// The key.
        key: String,
    },
    /// Set a key's value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Opaque flags stored with the value.
        #[arg(long)]
        flags: Option<u64>,
        /// Write only if the key's modify index is this (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Delete a key (or, with --recurse, a prefix).
    Delete {
        /// The key or prefix.
        key: String,
        /// Delete every key under the prefix.
        #[arg(long)]
        recurse: bool,
    },
    /// List keys under a prefix.
    List {
        /// The prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// Fold keys at this separator (e.g. "/").
        #[arg(long)]
        separator: Option<String>,
    },
    /// Print every key under a prefix as JSON, in `consul kv export`'s format (an array of
    /// {"key", "flags", "value"} with base64 values), to move trees between clusters.
    Export {
        /// The prefix (all keys if omitted).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Write the keys of a `kv export` document (colony's or Consul's). The whole document
    /// is checked before anything is written; keys are written in transactions of 64.
    Import {
        /// The document: @FILE to read a file, - to read standard input, or the JSON itself.
        data: String,
        /// Put this before every imported key.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
enum ServicesCommand {
    /// Register a service from a JSON file (Consul's service registration format).
    Register {
        /// The JSON file.
        file: std::path::PathBuf,
    },
    /// Deregister a service by ID.
    Deregister {
        /// Service ID.
        id: String,
    },
    /// List this agent's services.
    List,
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// List services and their tags.
    Services,
    /// List nodes.
    Nodes,
}

#[derive(Debug, Subcommand)]
enum WatchCommand {
    /// Watch one KV key.
    Key {
        /// The key.
        key: String,
    },
    /// Watch the healthy instances of a service.
    Service {
        /// Service name.
        name: String,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&cli.http_addr);
    let json = cli.json;
    match cli.command {
        Command::Agent(args) => return agent_cmd::run(*args, &cli.http_addr).await,
        Command::Bench(args) => return bench::run(args, &cli.http_addr, json).await,
        Command::Sim(command) => {
            tokio::task::spawn_blocking(move || sim_cmd::run(command, json))
                .await
                .context("simulator thread")??;
        }
        Command::Kv(command) => kv(&client, command, json).await?,
        Command::Services(command) => services(&client, command, json).await?,
        Command::Catalog(command) => catalog(&client, command, json).await?,
        Command::Members => members(&client, json).await?,
        Command::Keygen => println!("{}", colony_runtime::keyring::generate_key()),
        Command::Keyring {
            list,
            install,
            use_key,
            remove,
        } => keyring(&client, list, install, use_key, remove, json).await?,
        Command::Lock {
            prefix,
            ttl,
            command,
        } => return lock(&client, &prefix, &ttl, command).await,
        Command::Watch(command) => watch(&client, command, json).await?,
        Command::Operator(OperatorCommand::Raft(command)) => raft(&client, command, json).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn decode_value(entry: &Value) -> Vec<u8> {
    entry["Value"]
        .as_str()
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .unwrap_or_default()
}

async fn kv(client: &ApiClient, command: KvCommand, json: bool) -> anyhow::Result<()> {
    match command {
        KvCommand::Get { key } => {
            let answer = client.get(&format!("/v1/kv/{}", encode_key(&key))).await?;
            if answer.status == hyper::StatusCode::NOT_FOUND {
                bail!("no key {key:?}");
            }
            let entries = answer.ok()?.json()?;
            if json {
                print_json(&entries[0]);
            } else {
                println!("{}", String::from_utf8_lossy(&decode_value(&entries[0])));
            }
        }
        KvCommand::Put {
            key,
            value,
            flags,
            cas,
        } => {
            let mut query = Vec::new();
            if let Some(flags) = flags {
                query.push(format!("flags={flags}"));
            }
            if let Some(cas) = cas {
                query.push(format!("cas={cas}"));
            }
            let path = format!("/v1/kv/{}?{}", encode_key(&key), query.join("&"));
            let answer = client.put(&path, value.into_bytes()).await?.ok()?;
            let done = answer.json()?.as_bool().unwrap_or(false);
            if json {
                print_json(
                    &serde_json::json!({ "key": key, "written": done, "index": answer.index() }),
                );
            } else if done {
                println!("wrote {key:?} at index {}", answer.index());
            } else {
                bail!("not written: the cas index {} is stale", cas.unwrap_or(0));
            }
        }
        KvCommand::Delete { key, recurse } => {
            let suffix = if recurse { "?recurse" } else { "" };
            client
                .delete(&format!("/v1/kv/{}{suffix}", encode_key(&key)))
                .await?
                .ok()?;
            if !json {
                println!(
                    "deleted {key:?}{}",
                    if recurse { " (recursively)" } else { "" }
                );
            }
        }
        KvCommand::Export { prefix } => crate::kv_transfer::export(client, &prefix).await?,
        KvCommand::Import { data, prefix } => {
            crate::kv_transfer::import(client, &data, &prefix, json).await?;
        }
        KvCommand::List { prefix, separator } => {
            let mut path = format!("/v1/kv/{}?keys", encode_key(&prefix));
            if let Some(separator) = separator {
                path.push_str(&format!("&separator={}", encode_key(&separator)));
            }
            let answer = client.get(&path).await?;
            let keys = if answer.status == hyper::StatusCode::NOT_FOUND {
                Value::Array(Vec::new())
            } else {
                answer.ok()?.json()?
            };
            if json {
                print_json(&keys);
            } else {
                for key in keys.as_array().into_iter().flatten() {
                    println!("{}", key.as_str().unwrap_or_default());
                }
            }
        }
    }
    Ok(())
}

async fn services(client: &ApiClient, command: ServicesCommand, json: bool) -> anyhow::Result<()> {
    match command {
        ServicesCommand::Register { file } => {
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let document: Value = serde_json::from_slice(&body)
                .with_context(|| format!("{} is not valid JSON", file.display()))?;
            let services = services_in_file(document)
                .with_context(|| format!("{} holds no service definition", file.display()))?;
            for service in &services {
                client.register_service(service).await?;
            }
            if !json {
                println!(
                    "registered {} service(s) from {}",
                    services.len(),
                    file.display()
                );
            }
        }
        ServicesCommand::Deregister { id } => {
            client
                .put(
                    &format!("/v1/agent/service/deregister/{}", encode_key(&id)),
                    Vec::new(),
                )
                .await?
                .ok()?;
            if !json {
                println!("deregistered service {id:?}");
            }
        }
        ServicesCommand::List => {
            let services = client.get("/v1/agent/services").await?.ok()?.json()?;
            if json {
                print_json(&services);
            } else {
                for (id, service) in services.as_object().into_iter().flatten() {
                    println!(
                        "{id}\t{}\tport {}\ttags {}",
                        service["Service"].as_str().unwrap_or_default(),
                        service["Port"],
                        service["Tags"]
                    );
                }
            }
        }
    }
    Ok(())
}

/// The service registrations in a file: a bare registration (`{"Name": ...}`), or a Consul
/// service definition file (`{"service": {...}}` or `{"services": [...]}`, any key case).
fn services_in_file(document: Value) -> Option<Vec<Value>> {
    let Value::Object(map) = document else {
        return None;
    };
    let wrapped = |name: &str| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name));
    match (wrapped("service"), wrapped("services")) {
        (Some((_, service @ Value::Object(_))), None) => Some(vec![service.clone()]),
        (None, Some((_, Value::Array(list)))) if !list.is_empty() => Some(list.clone()),
        (None, None) if !map.is_empty() => Some(vec![Value::Object(map)]),
        _ => None,
    }
}

async fn raft(client: &ApiClient, command: RaftCommand, json: bool) -> anyhow::Result<()> {
    match command {
        RaftCommand::ListPeers => {
            let config = client
                .get("/v1/operator/raft/configuration")
                .await?
                .ok()?
                .json()?;
            if json {
                print_json(&config);
                return Ok(());
            }
            println!("Node\tID\tAddress\tState\tVoter");
            for server in config["Servers"].as_array().into_iter().flatten() {
                let state = if server["Leader"] == true {
                    "leader"
                } else {
                    "follower"
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    server["Node"].as_str().unwrap_or_default(),
                    server["ID"].as_str().unwrap_or_default(),
                    server["Address"].as_str().unwrap_or_default(),
                    state,
                    server["Voter"]
                );
            }
        }
        RaftCommand::RemovePeer { id, address } => {
            let query = match (id, address) {
                (Some(id), None) => format!("id={}", crate::client::encode_key(&id)),
                (None, Some(address)) => format!("address={}", crate::client::encode_key(&address)),
                _ => anyhow::bail!("give exactly one of --id and --address"),
            };
            client
                .delete(&format!("/v1/operator/raft/peer?{query}"))
                .await?
                .ok()?;
            if !json {
                println!("Removed peer");
            }
        }
    }
    Ok(())
}

async fn catalog(client: &ApiClient, command: CatalogCommand, json: bool) -> anyhow::Result<()> {
    match command {
        CatalogCommand::Services => {
            let services = client.get("/v1/catalog/services").await?.ok()?.json()?;
            if json {
                print_json(&services);
            } else {
                for (name, tags) in services.as_object().into_iter().flatten() {
                    println!("{name}\t{tags}");
                }
            }
        }
        CatalogCommand::Nodes => {
            let nodes = client.get("/v1/catalog/nodes").await?.ok()?.json()?;
            if json {
                print_json(&nodes);
            } else {
                for node in nodes.as_array().into_iter().flatten() {
                    println!(
                        "{}\t{}\t{}",
                        node["Node"].as_str().unwrap_or_default(),
                        node["Address"].as_str().unwrap_or_default(),
                        node["ID"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

async fn members(client: &ApiClient, json: bool) -> anyhow::Result<()> {
    let view = client.get("/v1/colony/members").await?.ok()?.json()?;
    if json {
        print_json(&view);
        return Ok(());
    }
    println!("Node\tAddress\tState\tIncarnation\tRole\tZone");
    for member in view["Members"].as_array().into_iter().flatten() {
        let text = |k: &str| member[k].as_str().unwrap_or_default().to_string();
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            text("Name"),
            text("Addr"),
            text("State"),
            member["Incarnation"],
            text("Role"),
            text("Zone")
        );
    }
    Ok(())
}

/// How long `colony keyring --use/--remove` waits for the previous step to reach every member.
const KEYRING_SPREAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn keyring(
    client: &ApiClient,
    list: bool,
    install: Option<String>,
    use_key: Option<String>,
    remove: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let ops = [("POST", install), ("PUT", use_key), ("DELETE", remove)];
    let mut acted = false;
    for (method, key) in ops {
        if let Some(key) = key {
            let body = serde_json::to_vec(&serde_json::json!({ "Key": key }))?;
            // `use` and `remove` wait (409) until the previous step has reached every
            // member; keep asking for a while, saying so once.
            let deadline = std::time::Instant::now() + KEYRING_SPREAD_WAIT;
            let mut said = false;
            loop {
                let response = client
                    .request(method, "/v1/operator/keyring", &body)
                    .await?;
                if response.status == hyper::StatusCode::CONFLICT
                    && std::time::Instant::now() < deadline
                {
                    if !said {
                        eprintln!(
                            "waiting for the keyring to spread: {}",
                            String::from_utf8_lossy(&response.body)
                        );
                        said = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    continue;
                }
                response.ok()?;
                break;
            }
            acted = true;
        }
    }
    if list || !acted {
        let rings = client.get("/v1/operator/keyring").await?.ok()?.json()?;
        if json {
            print_json(&rings);
        } else {
            for ring in rings.as_array().into_iter().flatten() {
                let primary = ring["PrimaryKeys"].as_object().cloned().unwrap_or_default();
                for key in ring["Keys"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    let mark = if primary.contains_key(key) {
                        " (primary)"
                    } else {
                        ""
                    };
                    println!("{key}{mark}");
                }
            }
        }
    }
    Ok(())
}

async fn watch(client: &ApiClient, command: WatchCommand, json: bool) -> anyhow::Result<()> {
    let path = match &command {
        WatchCommand::Key { key } => format!("/v1/kv/{}", encode_key(key)),
        WatchCommand::Service { name } => {
            format!("/v1/health/service/{}?passing", encode_key(name))
        }
    };
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut index = 0u64;
    loop {
        let url = format!("{path}{separator}index={index}&wait=5m");
        let answer = tokio::select! {
            answer = client.get(&url) => answer?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let new_index = answer.index();
        if new_index == index {
            continue;
        }
        // An index that went backwards means the store was reset: start over.
        index = if new_index < index { 0 } else { new_index };
        let value = if answer.status == hyper::StatusCode::NOT_FOUND {
            Value::Null
        } else {
            answer.ok()?.json()?
        };
        if json {
            println!(
                "{}",
                serde_json::json!({ "index": new_index, "value": value })
            );
            continue;
        }
        match &command {
            WatchCommand::Key { key } if value.is_null() => {
                println!("[{new_index}] {key}: (absent)")
            }
            WatchCommand::Key { key } => println!(
                "[{new_index}] {key} = {}",
                String::from_utf8_lossy(&decode_value(&value[0]))
            ),
            WatchCommand::Service { name } => {
                let instances: Vec<String> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let address = e["Service"]["Address"]
                            .as_str()
                            .filter(|a| !a.is_empty())
                            .or(e["Node"]["Address"].as_str())
                            .unwrap_or_default();
                        format!("{address}:{}", e["Service"]["Port"])
                    })
                    .collect();
                println!(
                    "[{new_index}] {name}: {} healthy [{}]",
                    instances.len(),
                    instances.join(", ")
                );
            }
        }
    }
}

async fn lock(
    client: &ApiClient,
    prefix: &str,
    ttl: &str,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let ttl_ms = colony_base::parse_go_duration_ms(ttl).context("invalid --ttl")?;
    let session_body = serde_json::json!({ "Name": format!("colony lock {prefix}"), "TTL": ttl, "Behavior": "release", "LockDelay": "1s" });
    let created = client
        .put("/v1/session/create", session_body.to_string().into_bytes())
        .await?
        .ok()?
        .json()?;
    let session = created["ID"]
        .as_str()
        .context("session create answered without an ID")?
        .to_string();
    let key = format!("{}/.lock", prefix.trim_end_matches('/'));
    let key_path = format!("/v1/kv/{}", encode_key(&key));
    let renew_every = Duration::from_millis((ttl_ms / 2).max(100));
    let mut renew = tokio::time::interval(renew_every);
    // Wait for the lock: try to acquire; if held, block until the key changes, renewing our
    // session meanwhile.
    let mut index = 0;
    loop {
        let acquired = client
            .put(&format!("{key_path}?acquire={session}"), Vec::new())
            .await?
            .ok()?;
        if acquired.json()?.as_bool() == Some(true) {
            break;
        }
        let url = format!("{key_path}?index={index}&wait=15s");
        tokio::select! {
            answer = client.get(&url) => index = answer?.index(),
            _ = renew.tick() => { client.put(&format!("/v1/session/renew/{session}"), Vec::new()).await?.ok()?; }
        }
    }
    eprintln!("lock acquired on {key}; running {}", command.join(" "));
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .spawn()
        .with_context(|| format!("cannot run {:?}", command[0]))?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            _ = renew.tick() => {
                let renewed = client.put(&format!("/v1/session/renew/{session}"), Vec::new()).await;
                if !matches!(renewed, Ok(ref a) if a.status.is_success()) {
                    eprintln!("error: lost the lock on {key} (session could not be renewed); stopping the command");
                    let _ = child.kill().await;
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    };
    let _ = client
        .put(&format!("{key_path}?release={session}"), Vec::new())
        .await;
    let _ = client
        .put(&format!("/v1/session/destroy/{session}"), Vec::new())
        .await;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}
