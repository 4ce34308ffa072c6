//! `verdict-loadtest chaos`: the chaos suite's long forms (the short ones run in CI,
//! tests/chaos.rs), each on loopback and bounded, printed as the README's table. The kill run
//! is repeated for each group membership (classic or KIP-848, dynamic or static) to compare
//! the longest gap between decisions.

use std::time::Duration;

use harness::chaos::{self, BrokerFault, ChaosReport, Membership, Size};
use verdict_runtime::engine::GroupProtocol;

#[derive(clap::Args, Clone)]
pub struct ChaosArgs {
    /// Which runs: all, killed, broker, leaders (3 brokers, partition leaders killed),
    /// connections (reset, cut and slowed through Toxiproxy), model-server, poison, churn.
    #[arg(long, default_value = "all")]
    run: String,
    /// Scale the event counts (1.0 = the README's long forms).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

/// KIP-848 with static membership is refused at start-up (`engine.group_protocol`): it left
/// partitions stuck in this run.
const MEMBERSHIPS: [Membership; 3] = [
    Membership {
        protocol: GroupProtocol::Classic,
        static_ids: false,
    },
    Membership {
        protocol: GroupProtocol::Classic,
        static_ids: true,
    },
    Membership {
        protocol: GroupProtocol::Consumer,
        static_ids: false,
    },
];

pub async fn run(args: ChaosArgs) {
    let n = |events: usize| ((events as f64 * args.scale) as usize).max(100);
    let wants = |name: &str| args.run == "all" || args.run == name;
    let mut rows: Vec<ChaosReport> = Vec::new();
    let mut show = |r: ChaosReport| {
        println!("{}", r.row());
        rows.push(r);
    };
    println!("{}", ChaosReport::HEADER);
    if wants("killed") {
        for m in MEMBERSHIPS {
            show(
                chaos::instances_killed(
                    Size {
                        events: n(100_000),
                        rate: 1000,
                    },
                    Duration::from_secs(10),
                    m,
                )
                .await,
            );
        }
    }
    if wants("broker") {
        show(
            chaos::broker_killed(
                Size {
                    events: n(20_000),
                    rate: 1000,
                },
                Duration::from_secs(10),
            )
            .await,
        );
    }
    if wants("leaders") {
        show(
            chaos::leaders_killed(
                // A cap: the feed runs until both kills are over.
                Size {
                    events: n(200_000),
                    rate: 500,
                },
                Duration::from_secs(10),
            )
            .await,
        );
    }
    if wants("connections") {
        let size = Size {
            events: n(30_000),
            rate: 1000,
        };
        show(chaos::broker_fault(size, BrokerFault::Reset, 5, Duration::from_secs(2)).await);
        show(chaos::broker_fault(size, BrokerFault::Unreachable, 2, Duration::from_secs(8)).await);
        show(chaos::broker_fault(size, BrokerFault::Slow, 3, Duration::from_secs(5)).await);
    }
    if wants("model-server") {
        show(chaos::model_server_down(n(5000), 50, Duration::from_secs(30)).await);
    }
    if wants("poison") {
        show(
            chaos::poison(
                Size {
                    events: n(100_000),
                    rate: 5000,
                },
                100,
            )
            .await,
        );
    }
    if wants("churn") {
        for m in &MEMBERSHIPS[..2] {
            show(
                chaos::churn(
                    Size {
                        events: n(30_000),
                        rate: 500,
                    },
                    Duration::from_secs(4),
                    *m,
                )
                .await,
            );
        }
    }
    println!();
    println!("== chaos suite ({} runs)", rows.len());
    println!("{}", ChaosReport::HEADER);
    for r in &rows {
        println!("{}", r.row());
    }
    let failed: Vec<&ChaosReport> = rows
        .iter()
        .filter(|r| r.lost > 0 || r.stray > 0 || r.stuck_partitions > 0 || r.order_violations > 0)
        .collect();
    if !failed.is_empty() {
        println!(
            "\n{} run(s) lost, strayed, stuck or reordered: see above",
            failed.len()
        );
        std::process::exit(1);
    }
}
