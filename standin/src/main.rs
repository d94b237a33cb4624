//! `standin`: serves the DynamoDB and DynamoDB Streams subset on loopback.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use clap::Parser;
use standin::server::{Latency, Shared, router};
use standin::store::Limits;

const AFTER_HELP: &str = "\
Point any DynamoDB client at a listener (for the AWS SDKs and CLI: AWS_ENDPOINT_URL=http://ADDR, any
credentials). Tables are per region: the region is read from each request's SigV4 credential scope.

Operations: CreateTable, DescribeTable, DescribeTimeToLive, UpdateTimeToLive, GetItem, PutItem,
DeleteItem, UpdateItem, Query (partition = :value), and on the Streams side DescribeStream,
GetShardIterator, GetRecords. Expressions: comparisons, BETWEEN, IN, AND, OR, NOT, attribute_exists,
attribute_not_exists, attribute_type, begins_with, size; SET (with +, -, if_not_exists) and REMOVE;
top-level attributes only. Anything else is refused with a ValidationException that names it.

Control endpoint (on every listener, JSON bodies, POST):
  /control/load   {\"region\",\"table\",\"count\",\"size\"?:200,\"prefix\"?:\"k\",\"first\"?:0}
                  writes COUNT new items (keys PREFIX-FIRST.. , about SIZE bytes, with bench_ms,
                  rep_version, rep_origin) straight into the table and its stream
  /control/feed   {\"region\",\"table\",\"rate\",\"seconds\",\"size\"?,\"prefix\"?}
                  the same at RATE items/s for SECONDS, in the background
  /control/stats  {\"region\",\"table\"}: items, stream records, shards, writes, conditional failures,
                  throttled reads and writes, and the lag of writes of items that carry bench_ms
                  (ms from the item's creation to the write: count, p50, p99, max)
  /control/reset  {\"region\",\"table\"}: zeroes those counters
  /control/roll   {\"region\",\"table\",\"split\"?:false}: closes every open shard now, continued by one
                  child each (a rollover) or two (a split)";

/// A stand-in for DynamoDB and DynamoDB Streams, in memory, for benchmarks and tests.
#[derive(Debug, Parser)]
#[command(version, after_help = AFTER_HELP)]
struct Args {
    /// Where to listen, as ADDR or ADDR=HOME_REGION (repeat for several). A call signed for a region
    /// other than its listener's home region pays --cross-region-ms on top. Port 0 picks a free port;
    /// each listener's URL is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: Vec<String>,
    /// Shards each new stream starts with.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    shards: u16,
    /// Round trip of a call within its region, in ms: MS for every region, or REGION=MS (repeatable).
    #[arg(long, default_value = "3")]
    latency_ms: Vec<String>,
    /// Added to the round trip of a call from another region, in ms.
    #[arg(long, default_value_t = 65)]
    cross_region_ms: u64,
    /// GetRecords calls per second per shard before LimitExceededException (DynamoDB Streams: 5); 0 for
    /// no limit.
    #[arg(long, default_value_t = 5)]
    get_records_per_second: u32,
    /// Write capacity units per second per partition before ProvisionedThroughputExceededException
    /// (DynamoDB: 1,000 per partition); 0 for no limit.
    #[arg(long, default_value_t = 0)]
    partition_write_units: u32,
    /// Partitions per table (the unit of the write limit).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    partitions: u16,
    /// Every this many seconds, close each open shard and continue it in one child (DynamoDB rolls
    /// shards over about every 4 hours); 0 for never.
    #[arg(long, default_value_t = 0.0)]
    rollover_every: f64,
    /// Every this many seconds, split each open shard into two children; 0 for never.
    #[arg(long, default_value_t = 0.0)]
    split_every: f64,
    /// Seconds a shard iterator stays valid (DynamoDB: 900).
    #[arg(long, default_value_t = 900)]
    iterator_lifetime: u64,
}

fn latency(args: &Args) -> anyhow::Result<Latency> {
    let mut latency = Latency {
        local: HashMap::new(),
        default: Duration::from_millis(3),
        cross_region: Duration::from_millis(args.cross_region_ms),
    };
    for entry in &args.latency_ms {
        let (region, ms) = match entry.split_once('=') {
            Some((region, ms)) => (Some(region), ms),
            None => (None, entry.as_str()),
        };
        let ms: u64 = ms.parse().with_context(|| {
            format!("--latency-ms {entry:?}: give MS or REGION=MS, MS a whole number")
        })?;
        match region {
            Some(region) => {
                latency
                    .local
                    .insert(region.to_owned(), Duration::from_millis(ms));
            }
            None => latency.default = Duration::from_millis(ms),
        }
    }
    Ok(latency)
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Option<Duration>> {
    if value == 0.0 {
        return Ok(None);
    }
    if !(0.01..=86_400.0).contains(&value) {
        bail!("{flag} {value}: give 0 (never) or 0.01 to 86400 seconds");
    }
    Ok(Some(Duration::from_secs_f64(value)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limits = Limits {
        shards: usize::from(args.shards),
        get_records_per_second: args.get_records_per_second,
        partition_write_units: args.partition_write_units,
        partitions: usize::from(args.partitions),
        iterator_lifetime: Duration::from_secs(args.iterator_lifetime),
    };
    let rollover = seconds("--rollover-every", args.rollover_every)?;
    let split = seconds("--split-every", args.split_every)?;
    let shared = Shared::new(limits, latency(&args)?);
    let mut servers = Vec::new();
    for spec in &args.listen {
        let (addr, home) = match spec.split_once('=') {
            Some((addr, home)) => (addr, Some(home.to_owned())),
            None => (spec.as_str(), None),
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--listen {spec}: cannot bind {addr}"))?;
        let local = listener.local_addr()?;
        match &home {
            Some(home) => println!("standin listening on http://{local} (home region {home})"),
            None => println!("standin listening on http://{local}"),
        }
        let app = router(shared.clone(), home);
        // Answers go out at once (no Nagle delay behind a small response).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        servers.push(tokio::spawn(
            async move { axum::serve(listener, app).await },
        ));
    }
    std::io::stdout().flush()?;
    for (every, is_split) in [(rollover, false), (split, true)] {
        let Some(every) = every else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let mut store = shared.lock();
                for table in store.tables.values_mut() {
                    table.roll_shards(is_split);
                }
            }
        });
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        result = futures_first(servers) => result,
    }
}

async fn futures_first(
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> anyhow::Result<()> {
    for server in servers {
        server.await??;
    }
    Ok(())
}
