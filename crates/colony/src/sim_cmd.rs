//! `colony sim`: scenarios on the deterministic simulator, printed as a summary or JSON.

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use colony_sim::{Latency, MembershipScenario, NetModel, Partition, SpreadFigures, run_membership};
use colony_swim::{Config, SECOND};

/// Simulator scenarios.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Membership (SWIM + Lifeguard): join convergence, dissemination rounds, failure
    /// detection time, false positives and traffic, on virtual time.
    Membership(Box<MembershipArgs>),
    /// Overload cascades (retry storm, health-check cascade, thundering herd) with naive
    /// clients and with colony-client's policies: goodput, retry amplification, p99 latency
    /// and recovery time, on virtual time.
    Overload(OverloadArgs),
}

/// Which overload scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverloadScenario {
    /// Retries on a throttled dependency (2× overload for 30 s).
    RetryStorm,
    /// Load spike → slow backends → failed health checks → removal → collapse.
    HealthCascade,
    /// Every cache key expires at once; the database gets 20× its capacity.
    ThunderingHerd,
    /// All three.
    All,
}

/// Which clients to run the scenario with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverloadClients {
    /// Timeouts and immediate retries (3), round robin over passing backends.
    Naive,
    /// colony-client's policies (adaptive limit, retry budget, breaker, P2C, ejection caps).
    Resilient,
    /// Both, one after the other.
    Both,
}

/// Options of `colony sim overload`.
#[derive(Debug, Args)]
pub struct OverloadArgs {
    /// The cascade to reproduce (parameters are fixed; see `docs` of colony_sim::overload).
    #[arg(long, value_enum, default_value = "all")]
    scenario: OverloadScenario,
    /// Naive clients, resilient ones, or both.
    #[arg(long, value_enum, default_value = "both")]
    clients: OverloadClients,
    /// Seed of every random choice (same seed, same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Draw goodput over time (÷ capacity) for every run into this SVG file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

/// Lifeguard switch.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Options of `colony sim membership`.
#[derive(Debug, Args)]
pub struct MembershipArgs {
    /// Cluster size.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Seed: the same seed and options replay the same run (same trace hash).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated duration (e.g. 60s, 1h is not accepted: use 3600s).
    #[arg(long, default_value = "60s")]
    duration: String,
    /// Datagram loss probability (0..1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Datagram duplication probability (0..1).
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Probability a datagram is held back 5 ms (reordered).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// One-way latency: const:T, uniform:LO,HI, normal:MEAN,SD, exp:FLOOR,MEAN.
    #[arg(long, default_value = "normal:0.5ms,0.1ms")]
    latency: String,
    /// Fraction of members paused --slow-stop out of every --slow-period (gray failure).
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// Paused part of a slow member's cycle.
    #[arg(long, default_value = "1.6s")]
    slow_stop: String,
    /// A slow member's cycle.
    #[arg(long, default_value = "2s")]
    slow_period: String,
    /// Instead of pausing slow members, delay everything they send by this much (an
    /// overloaded sender: Lifeguard's case), e.g. 600ms.
    #[arg(long, value_name = "DURATION")]
    slow_delay: Option<String>,
    /// Members killed after the dissemination measurements.
    #[arg(long, default_value_t = 1)]
    kill: usize,
    /// Partition: SIZES@START+DURATION[:oneway], e.g. 25/25@20s+120s (repeatable).
    #[arg(long)]
    partition: Vec<String>,
    /// Lifeguard (local health awareness, nacks, dynamic suspicion, buddy system).
    #[arg(long, value_enum, default_value = "on")]
    lifeguard: OnOff,
    /// Metadata updates whose dissemination is timed.
    #[arg(long, default_value_t = 5)]
    injections: usize,
    /// Start with full membership everywhere (skips the join phase; for very large clusters).
    #[arg(long)]
    warm: bool,
    /// Restarts per simulated second after the kill phase (same name, new address).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Draw dissemination and detection curves into this SVG file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Which SWIM implementation runs: colony's core, or the foca crate as a baseline
    /// (join, idle traffic and kill phases only, on the same network model).
    #[arg(long = "impl", value_enum, default_value = "colony")]
    implementation: Implementation,
}

/// The SWIM implementation a membership simulation runs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Implementation {
    /// Colony's core (`colony-swim`), with Lifeguard unless `--lifeguard off`.
    Colony,
    /// The `foca` crate with memberlist's LAN parameters: a baseline without Lifeguard.
    Foca,
}

/// Runs a simulator command.
pub fn run(command: SimCommand, json: bool) -> anyhow::Result<()> {
    match command {
        SimCommand::Membership(args) => membership(*args, json),
        SimCommand::Overload(args) => overload(&args, json),
    }
}

fn overload(args: &OverloadArgs, json: bool) -> anyhow::Result<()> {
    use colony_sim::overload::{ClientKind, Scenario, run};
    let scenarios: Vec<Scenario> = match args.scenario {
        OverloadScenario::RetryStorm => vec![Scenario::RetryStorm],
        OverloadScenario::HealthCascade => vec![Scenario::HealthCascade],
        OverloadScenario::ThunderingHerd => vec![Scenario::ThunderingHerd],
        OverloadScenario::All => Scenario::ALL.to_vec(),
    };
    let kinds: Vec<ClientKind> = match args.clients {
        OverloadClients::Naive => vec![ClientKind::Naive],
        OverloadClients::Resilient => vec![ClientKind::Resilient],
        OverloadClients::Both => vec![ClientKind::Naive, ClientKind::Resilient],
    };
    let mut reports = Vec::new();
    for scenario in &scenarios {
        for kind in &kinds {
            eprintln!(
                "running {} with {} clients ...",
                scenario.as_str(),
                kind.as_str()
            );
            reports.push(run(*scenario, *kind, args.seed));
        }
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, crate::plot::overload_svg(&reports))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    if json {
        let value = if reports.len() == 1 {
            serde_json::to_value(&reports[0])?
        } else {
            serde_json::to_value(&reports)?
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:>9} {:>16} {:>14} {:>9} {:>10}  trace hash",
        "scenario",
        "clients",
        "capacity",
        "goodput/capacity",
        "amplification",
        "p99 ms",
        "recovery s"
    );
    for r in &reports {
        println!(
            "{:<16} {:<10} {:>9.0} {:>16.3} {:>14.2} {:>9.1} {:>10}  {:016x}",
            r.scenario.as_str(),
            r.clients.as_str(),
            r.capacity_rps,
            r.goodput_ratio_during_overload,
            r.retry_amplification,
            r.p99_latency_ms,
            r.recovery_s
                .map_or("never".to_string(), |s| format!("{s:.1}")),
            r.trace_hash
        );
    }
    Ok(())
}

fn time(s: &str, what: &str) -> anyhow::Result<u64> {
    colony_sim::net::parse_time(s)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--{what}"))
}

/// Prints the join, dissemination and failure-detection lines of a membership run.
fn print_spread(spread: &SpreadFigures, killed: usize) {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    let rounds = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!("join convergence      {}", ms(spread.join_convergence_ms));
    println!(
        "dissemination rounds  p50 {}  p99 {}  max {}  ({:.1}% informed)",
        rounds(spread.dissemination_rounds_p50),
        rounds(spread.dissemination_rounds_p99),
        rounds(spread.dissemination_rounds_max),
        spread.dissemination_informed * 100.0
    );
    println!(
        "failure detection     p50 {}  p99 {}  max {}  first {}  ({} of {killed} victims)",
        ms(spread.detection_ms_p50),
        ms(spread.detection_ms_p99),
        ms(spread.detection_ms_max),
        ms(spread.first_detection_ms),
        spread.detected
    );
}

/// `colony sim membership --impl foca`: the baseline on the same network model.
fn foca_membership(args: &MembershipArgs, net: NetModel, json: bool) -> anyhow::Result<()> {
    if args.slow_fraction > 0.0 || args.slow_delay.is_some() || args.churn > 0.0 {
        bail!(
            "--impl foca runs the join (or warm start), idle, rumour and kill phases only: drop --slow-fraction, --slow-delay and --churn"
        );
    }
    let scenario = colony_sim::foca_baseline::BaselineScenario {
        nodes: args.nodes,
        seed: args.seed,
        duration: time(&args.duration, "duration")?,
        net,
        kill: args.kill,
        injections: args.injections,
        warm: args.warm,
    };
    if !json {
        eprintln!(
            "simulating {} foca nodes for {} s (seed {})…",
            scenario.nodes,
            scenario.duration / SECOND,
            scenario.seed
        );
    }
    let result = colony_sim::foca_baseline::run_foca_baseline(&scenario);
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!(
        "nodes {}  seed {}  {}  trace {}",
        result.nodes, result.seed, result.implementation, result.trace_hash
    );
    print_spread(&result.spread, scenario.kill);
    let suspicions = result
        .false_positive_suspicions
        .map_or("-".to_string(), |n| n.to_string());
    println!(
        "false positives       {suspicions} suspicions, {} members declared down ({} declarations)",
        result.false_positive_failures, result.false_failure_declarations
    );
    println!(
        "idle traffic          {:.2} msgs/s, {:.0} B/s per node",
        result.msgs_per_node_per_s, result.bytes_per_node_per_s
    );
    println!(
        "simulator             {} events in {:.0} ms wall",
        result.events, result.wall_ms
    );
    Ok(())
}

fn membership(args: MembershipArgs, json: bool) -> anyhow::Result<()> {
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    for (name, p) in [
        ("loss", args.loss),
        ("duplicate", args.duplicate),
        ("reorder", args.reorder),
    ] {
        if !(0.0..=1.0).contains(&p) {
            bail!("--{name} must be between 0 and 1");
        }
    }
    if !(0.0..1.0).contains(&args.slow_fraction) {
        bail!("--slow-fraction must be in [0, 1)");
    }
    if args.kill + 1 >= args.nodes {
        bail!("--kill must leave at least two members alive");
    }
    let partitions: Result<Vec<Partition>, String> =
        args.partition.iter().map(|p| Partition::parse(p)).collect();
    let net = NetModel {
        latency: Latency::parse(&args.latency).map_err(anyhow::Error::msg)?,
        loss: args.loss,
        duplicate: args.duplicate,
        reorder: args.reorder,
        partitions: partitions.map_err(anyhow::Error::msg)?,
        ..NetModel::default()
    };
    if matches!(args.implementation, Implementation::Foca) {
        return foca_membership(&args, net, json);
    }
    let config = Config {
        lifeguard: matches!(args.lifeguard, OnOff::On),
        ..Config::lan()
    };
    let scenario = MembershipScenario {
        nodes: args.nodes,
        seed: args.seed,
        duration: time(&args.duration, "duration")?,
        net,
        slow_fraction: args.slow_fraction,
        slow_stop: time(&args.slow_stop, "slow-stop")?,
        slow_period: time(&args.slow_period, "slow-period")?,
        slow_send_delay: match &args.slow_delay {
            Some(delay) => time(delay, "slow-delay")?,
            None => 0,
        },
        kill: args.kill,
        injections: args.injections,
        warm: args.warm,
        config,
        check_invariants: false,
        churn_per_s: args.churn,
    };
    if !json {
        eprintln!(
            "simulating {} nodes for {} s (seed {})…",
            scenario.nodes,
            scenario.duration / SECOND,
            scenario.seed
        );
    }
    let result = run_membership(&scenario);
    if let Some(path) = &args.plot {
        std::fs::write(path, crate::plot::membership_svg(&result))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    println!(
        "nodes {}  seed {}  lifeguard {}  trace {}",
        result.nodes,
        result.seed,
        if result.lifeguard { "on" } else { "off" },
        result.trace_hash
    );
    print_spread(&result.spread, scenario.kill);
    println!(
        "false positives       {} suspicions ({} of healthy members), {} members declared failed ({} declarations)",
        result.false_positive_suspicions,
        result.false_suspicions_of_healthy,
        result.false_positive_failures,
        result.false_failure_declarations
    );
    if let Some(heal) = result.partition_heal_ms {
        println!("partition heal        one view everywhere {heal:.0} ms after the heal");
    }
    if result.churn_restarts > 0 {
        println!(
            "churn                 {} restarts, accepted everywhere p50 {} p99 {} ({} unaccepted), table ≤ {:.2}× live, {} version regressions",
            result.churn_restarts,
            ms(result.churn_accept_ms_p50),
            ms(result.churn_accept_ms_p99),
            result.churn_unaccepted,
            result.max_table_ratio,
            result.version_regressions
        );
    }
    println!(
        "membership table      ≤ {:.0} bytes per member",
        result.table_bytes_per_member
    );
    println!(
        "idle traffic          {:.2} msgs/s, {:.0} B/s per node",
        result.msgs_per_node_per_s, result.bytes_per_node_per_s
    );
    println!(
        "speed                 {:.0} ms wall, {:.1} simulated s per wall s, {:.0} node-s per wall s",
        result.wall_ms, result.sim_seconds_per_wall_second, result.node_seconds_per_wall_second
    );
    Ok(())
}
