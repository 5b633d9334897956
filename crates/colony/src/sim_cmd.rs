//! `colony sim`: scenarios on the deterministic simulator, printed as a summary or JSON.

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use colony_sim::{Latency, MembershipScenario, NetModel, Partition, run_membership};
use colony_swim::{Config, SECOND};

/// Simulator scenarios.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Membership (SWIM + Lifeguard): join convergence, dissemination rounds, failure
    /// detection time, false positives and traffic, on virtual time.
    Membership(MembershipArgs),
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
}

/// Runs a simulator command.
pub fn run(command: SimCommand, json: bool) -> anyhow::Result<()> {
    match command {
        SimCommand::Membership(args) => membership(args, json),
    }
}

fn time(s: &str, what: &str) -> anyhow::Result<u64> {
    colony_sim::net::parse_time(s)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--{what}"))
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
    let rounds = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!(
        "nodes {}  seed {}  lifeguard {}  trace {}",
        result.nodes,
        result.seed,
        if result.lifeguard { "on" } else { "off" },
        result.trace_hash
    );
    println!("join convergence      {}", ms(result.join_convergence_ms));
    println!(
        "dissemination rounds  p50 {}  p99 {}  max {}  ({:.1}% informed)",
        rounds(result.dissemination_rounds_p50),
        rounds(result.dissemination_rounds_p99),
        rounds(result.dissemination_rounds_max),
        result.dissemination_informed * 100.0
    );
    println!(
        "failure detection     p50 {}  p99 {}  max {}  first {}  ({} of {} victims)",
        ms(result.detection_ms_p50),
        ms(result.detection_ms_p99),
        ms(result.detection_ms_max),
        ms(result.first_detection_ms),
        result.detected,
        scenario.kill
    );
    println!(
        "false positives       {} suspicions, {} members declared failed ({} declarations)",
        result.false_positive_suspicions,
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
