//! The scenario matrix: which faults each scenario injects, at two sizes.

use std::time::Duration;

use tandem_sim::{SimConfig, SimSystem, TransportFaults};

/// How big a run is: `Short` for `make test`, `Full` for `make chaos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// A few thousand events, short disruptions.
    Short,
    /// Tens of thousands of events, the disruptions the issue names.
    Full,
}

/// Something done to the daemon or the broker while it ingests.
#[derive(Clone, Copy, Debug)]
pub enum Disruption {
    /// Nothing.
    None,
    /// SIGKILL the daemon this many times during ingestion, restarting it each time.
    Kills(u32),
    /// Take the broker down for this long during ingestion.
    BrokerOutage(Duration),
    /// Run a hot standby beside the daemon (`[replication]`); lose the active one's node
    /// (SIGKILL and its store deleted) during ingestion; the standby takes over.
    NodeLoss,
    /// Stop the daemon halfway; while it is stopped, the rest of the run arrives and the
    /// broker deletes the first half of what it has not read on every source partition
    /// (retention, `DeleteRecords`); then restart it.
    RetentionWhileStopped,
}

/// One scenario of the matrix.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short name, also the topic prefix.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Its simulated run.
    pub sim: SimConfig,
    /// What happens to the processes.
    pub disruption: Disruption,
}

impl Scenario {
    /// Whether every event the systems emitted reaches tandem (late, twice or out of order
    /// maybe): only then can it know from when each record has differed.
    pub fn delivers_every_event(&self) -> bool {
        self.sim.transport.drop_rate == 0.0
            && !matches!(self.disruption, Disruption::RetentionWhileStopped)
    }
}

/// A clean run of the right size: no sync faults beyond the defaults' mild ones, no poison.
fn base(size: Size, seed: u64) -> SimConfig {
    let records = match size {
        Size::Short => 150,
        Size::Full => 1_500,
    };
    let mut sim = SimConfig::sized(seed, records);
    sim.redelivery_rate = 0.0;
    sim.stale_replay_rate = 0.0;
    sim.poison_per_thousand = 0.0;
    sim
}

/// Every scenario at the given size.
pub fn matrix(size: Size) -> Vec<Scenario> {
    let short = size == Size::Short;
    let with = |seed: u64, change: &dyn Fn(&mut SimConfig)| {
        let mut sim = base(size, seed);
        change(&mut sim);
        sim
    };
    vec![
        Scenario {
            name: "drop-source",
            description: "5% of the source's events lost in transport",
            sim: with(101, &|sim| {
                sim.transport = TransportFaults {
                    drop_rate: 0.05,
                    drop_system: Some(SimSystem::Source),
                    ..TransportFaults::default()
                }
            }),
            disruption: Disruption::None,
        },
        Scenario {
            name: "duplicate",
            description: "5% of events delivered twice",
            sim: with(102, &|sim| sim.redelivery_rate = 0.05),
            disruption: Disruption::None,
        },
        Scenario {
            name: "reorder",
            description: "events shuffled within windows of 100",
            sim: with(103, &|sim| sim.transport.reorder_window = 100),
            disruption: Disruption::None,
        },
        Scenario {
            name: "lag",
            description: "the target's topic lags: all of its events arrive after the source's",
            sim: with(113, &|sim| sim.transport.lagging = Some(SimSystem::Target)),
            disruption: Disruption::None,
        },
        Scenario {
            name: "delay",
            description: "5% of events delivered after everything else, beyond grace",
            sim: with(104, &|sim| sim.transport.delay_rate = 0.05),
            disruption: Disruption::None,
        },
        Scenario {
            name: "gap-events",
            description: "3% of events lost and announced by gap events",
            sim: with(105, &|sim| {
                sim.transport.drop_rate = 0.03;
                sim.transport.gap_instead_rate = 1.0;
            }),
            disruption: Disruption::None,
        },
        Scenario {
            name: "seq-holes",
            description: "2% of both systems' events lost silently (seq jumps)",
            sim: with(106, &|sim| sim.transport.drop_rate = 0.02),
            disruption: Disruption::None,
        },
        Scenario {
            name: "partial-drops",
            description: "a feed of partial updates that loses 3% of the target's events",
            sim: with(107, &|sim| {
                sim.partial_update_rate = 0.9;
                sim.transport.drop_rate = 0.03;
                sim.transport.drop_system = Some(SimSystem::Target);
            }),
            disruption: Disruption::None,
        },
        Scenario {
            name: "broker-outage",
            description: "the broker is down during ingestion",
            sim: with(108, &|_| {}),
            disruption: Disruption::BrokerOutage(Duration::from_secs(if short { 5 } else { 45 })),
        },
        Scenario {
            name: "sigkill",
            description: "the daemon is killed with SIGKILL during ingestion, and restarted",
            sim: with(109, &|_| {}),
            disruption: Disruption::Kills(if short { 3 } else { 20 }),
        },
        Scenario {
            name: "node-loss",
            description: "the active instance's node is lost (SIGKILL, store deleted) during ingestion; its hot standby takes over",
            sim: with(113, &|_| {}),
            disruption: Disruption::NodeLoss,
        },
        Scenario {
            name: "retention",
            description: "the broker deletes events the stopped daemon has not read",
            // Without `seq`, only the offsets can tell that events were lost.
            sim: with(111, &|sim| sim.emit_seq = false),
            disruption: Disruption::RetentionWhileStopped,
        },
        Scenario {
            name: "rekeyed-references",
            description: "records re-keyed in the target (ids reused) while 5% of the target's events are lost and announced by gap events: references to them cannot be vouched for",
            sim: with(112, &|sim| {
                sim.target_reuse_rate = 0.3;
                sim.transport = TransportFaults {
                    drop_rate: 0.05,
                    drop_system: Some(SimSystem::Target),
                    gap_instead_rate: 1.0,
                    ..TransportFaults::default()
                };
            }),
            disruption: Disruption::None,
        },
        Scenario {
            name: "poison",
            description: "1% of messages are garbage",
            sim: with(110, &|sim| sim.poison_per_thousand = 10.0),
            disruption: Disruption::None,
        },
    ]
}
