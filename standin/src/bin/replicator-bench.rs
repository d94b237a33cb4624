//! `replicator-bench`: runs the real `replicator` process against the stand-in and reports drain
//! throughput, steady-state lag, CPU per record and peak memory, each beside the floor that the
//! stand-in's latencies and limits alone impose. See docs/BENCHMARKS.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value as Json, json};

const SOURCE_REGION: &str = "us-east-1";
const TARGET_REGION: &str = "us-west-2";
const TABLE: &str = "bench";

/// Benchmarks the replicator against the stand-in.
#[derive(Debug, Parser, Clone)]
#[command(version)]
struct Args {
    /// The replicator binary (default: `replicator` beside this one).
    #[arg(long)]
    replicator: Option<PathBuf>,
    /// The stand-in binary (default: `standin` beside this one).
    #[arg(long)]
    standin: Option<PathBuf>,
    /// A few seconds in all (tiny backlog, short feed): checks the instrument, measures nothing useful.
    #[arg(long)]
    quick: bool,
    /// Which parts: drain, lag, standin (comma-separated).
    #[arg(long, default_value = "drain,lag,standin", value_delimiter = ',')]
    parts: Vec<String>,
    /// Modes to run (comma-separated): one-way, lww.
    #[arg(long, default_value = "one-way,lww", value_delimiter = ',')]
    modes: Vec<String>,
    /// Backlog drained, in records.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Shard counts for the drain (comma-separated).
    #[arg(long, default_value = "1,4,16,64", value_delimiter = ',')]
    shards: Vec<u16>,
    /// Input rates for the lag runs, records/s (comma-separated).
    #[arg(long, default_value = "1000,5000,10000", value_delimiter = ',')]
    rates: Vec<u64>,
    /// Shards of the lag runs' stream.
    #[arg(long, default_value_t = 4)]
    lag_shards: u16,
    /// Seconds each lag run feeds.
    #[arg(long, default_value_t = 30.0)]
    lag_seconds: f64,
    /// Record size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Round trip between the regions, ms.
    #[arg(long, default_value_t = 65)]
    cross_region_ms: u64,
    /// Round trip within a region, ms.
    #[arg(long, default_value_t = 3)]
    local_ms: u64,
    /// The CPU the replicator is pinned to (taskset); the stand-in gets the others. Ignored without
    /// taskset or with one CPU.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Extra flags for `replicator run` (repeat), for example --replicator-flag=--batch-size=500.
    #[arg(long = "replicator-flag", allow_hyphen_values = true)]
    replicator_flags: Vec<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn beside_me(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let path = me.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release -p replicator -p standin) or pass --{name}",
            path.display()
        );
    }
    Ok(path)
}

/// A minimal HTTP/1.1 POST on loopback (the bench needs no client library, and its cost stays out of
/// the way).
fn post(
    url: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn control(url: &str, path: &str, body: Json) -> anyhow::Result<Json> {
    let (status, text) = post(url, path, &[], &body.to_string())?;
    if status != 200 {
        bail!("{path}: HTTP {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

fn api(url: &str, region: &str, target: &str, body: Json) -> anyhow::Result<Json> {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=bench/20260101/{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0"
    );
    let (status, text) = post(
        url,
        "/",
        &[
            ("X-Amz-Target", target),
            ("Authorization", &auth),
            ("Content-Type", "application/x-amz-json-1.0"),
        ],
        &body.to_string(),
    )?;
    if status != 200 {
        bail!("{target}: HTTP {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

fn pin(command: &mut Command, cpus: Option<&str>) -> Command {
    match cpus {
        Some(list) => {
            let mut pinned = Command::new("taskset");
            pinned
                .arg("-c")
                .arg(list)
                .arg(command.get_program())
                .args(command.get_args());
            for (k, v) in command.get_envs() {
                if let Some(v) = v {
                    pinned.env(k, v);
                }
            }
            pinned
        }
        None => std::mem::replace(command, Command::new("true")),
    }
}

/// A running process that is killed when dropped.
struct Running {
    child: Child,
    what: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (at most 30 s) for a clean exit.
    fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status} on SIGTERM", self.what);
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} did not stop within 30 s of SIGTERM", self.what)
    }
}

/// CPU seconds (user + system) the process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident memory (VmHWM), MB.
fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .context("no VmHWM value")?
        .parse()?;
    Ok(kb / 1024.0)
}

struct Bench {
    args: Args,
    replicator: PathBuf,
    standin: PathBuf,
    pinning: Option<(String, String)>,
}

impl Bench {
    fn start_standin(&self, shards: u16) -> anyhow::Result<(Running, String)> {
        let mut command = Command::new(&self.standin);
        command.args([
            "--listen".to_owned(),
            format!("127.0.0.1:0={TARGET_REGION}"),
            "--shards".to_owned(),
            shards.to_string(),
            "--latency-ms".to_owned(),
            self.args.local_ms.to_string(),
            "--cross-region-ms".to_owned(),
            self.args.cross_region_ms.to_string(),
        ]);
        let mut command = pin(&mut command, self.pinning.as_ref().map(|p| p.1.as_str()));
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.standin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let running = Running {
            child,
            what: "standin",
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .with_context(|| format!("standin printed {line:?}, not its URL"))?
            .to_owned();
        for (region, stream) in [(SOURCE_REGION, true), (TARGET_REGION, false)] {
            let mut body = json!({
                "TableName": TABLE,
                "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                "BillingMode": "PAY_PER_REQUEST",
            });
            if stream {
                body["StreamSpecification"] =
                    json!({"StreamEnabled": true, "StreamViewType": "NEW_AND_OLD_IMAGES"});
            }
            api(&url, region, "DynamoDB_20120810.CreateTable", body)?;
        }
        api(
            &url,
            TARGET_REGION,
            "DynamoDB_20120810.UpdateTimeToLive",
            json!({"TableName": TABLE, "TimeToLiveSpecification": {"Enabled": true, "AttributeName": "rep_expires"}}),
        )?;
        Ok((running, url))
    }

    fn start_replicator(&self, url: &str, mode: &str) -> anyhow::Result<Running> {
        let mut command = Command::new(&self.replicator);
        command
            .args([
                "run",
                "--source-region",
                SOURCE_REGION,
                "--source-table",
                TABLE,
                "--target-region",
                TARGET_REGION,
                "--target-table",
                TABLE,
                "--lease-table",
                "bench-leases",
                "--mode",
                mode,
                "--start-position",
                "trim-horizon",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log",
                "warn",
            ])
            .args(&self.args.replicator_flags)
            .env("AWS_ENDPOINT_URL", url)
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env_remove("AWS_PROFILE");
        let mut command = pin(&mut command, self.pinning.as_ref().map(|p| p.0.as_str()));
        command.stdout(Stdio::null()).stderr(Stdio::inherit());
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.replicator.display()))?;
        Ok(Running {
            child,
            what: "replicator",
        })
    }

    fn stats(url: &str, region: &str) -> anyhow::Result<Json> {
        control(
            url,
            "/control/stats",
            json!({"region": region, "table": TABLE}),
        )
    }

    /// Waits until the target has `writes` applied writes; the stats at that point.
    fn wait_for_writes(
        url: &str,
        writes: u64,
        timeout: Duration,
        replicator: &mut Running,
    ) -> anyhow::Result<Json> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = Self::stats(url, TARGET_REGION)?;
            let done = stats["writes"].as_u64().unwrap_or(0)
                + stats["conditional_failures"].as_u64().unwrap_or(0);
            if done >= writes {
                return Ok(stats);
            }
            if let Some(status) = replicator.child.try_wait()? {
                bail!("the replicator exited ({status}) after {done} of {writes} writes");
            }
            if Instant::now() > deadline {
                bail!(
                    "only {done} of {writes} writes within {} s",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn read_rtt_ms(&self) -> f64 {
        (self.args.cross_region_ms + self.args.local_ms) as f64
    }

    fn drain(&self, mode: &str, shards: u16) -> anyhow::Result<Json> {
        let records = self.args.records;
        let (standin, url) = self.start_standin(shards)?;
        let mut loaded = 0;
        while loaded < records {
            let chunk = (records - loaded).min(200_000);
            control(
                &url,
                "/control/load",
                json!({"region": SOURCE_REGION, "table": TABLE, "count": chunk, "first": loaded, "size": self.args.size}),
            )?;
            loaded += chunk;
        }
        let started_ms = now_ms();
        let standin_cpu_before = cpu_seconds(standin.pid())?;
        let mut replicator = self.start_replicator(&url, mode)?;
        let timeout = Duration::from_secs(120 + records / 500);
        let stats = Self::wait_for_writes(&url, records, timeout, &mut replicator)?;
        let cpu = cpu_seconds(replicator.pid())?;
        let rss = peak_rss_mb(replicator.pid())?;
        let standin_cpu = cpu_seconds(standin.pid())? - standin_cpu_before;
        let wall = (now_ms() - started_ms) as f64 / 1000.0;
        replicator.stop()?;
        let source = Self::stats(&url, SOURCE_REGION)?;
        drop(standin);
        let first = stats["first_write_ms"].as_u64().unwrap_or(0);
        let last = stats["last_write_ms"].as_u64().unwrap_or(0);
        let seconds = (last.saturating_sub(first) as f64 / 1000.0).max(0.001);
        let throughput = records as f64 / seconds;
        // The floor: every shard read as fast as the limits allow (a page of 1,000 records per
        // GetRecords, at most 5 calls a second, each a cross-region round trip).
        let page_interval = (1000.0 / 5.0f64).max(self.read_rtt_ms()) / 1000.0;
        let floor_throughput = f64::from(shards) * 1000.0 / page_interval;
        let floor_seconds = records as f64 / floor_throughput;
        Ok(json!({
            "part": "drain",
            "mode": mode,
            "shards": shards,
            "records": records,
            "startup_seconds": first.saturating_sub(started_ms) as f64 / 1000.0,
            "seconds": seconds,
            "records_per_second": throughput,
            "cpu_seconds": cpu,
            "cpu_seconds_per_million": cpu / records as f64 * 1e6,
            "cpu_microseconds_per_record": cpu / records as f64 * 1e6,
            "peak_rss_mb": rss,
            "floor_records_per_second": floor_throughput,
            "times_floor": seconds / floor_seconds,
            "get_records_calls": source["get_records"],
            "throttled_reads": source["throttled_reads"],
            "throttled_writes": stats["throttled_writes"],
            "standin_cpu_share": standin_cpu / wall,
        }))
    }

    fn lag(&self, mode: &str, rate: u64) -> anyhow::Result<Json> {
        let shards = self.args.lag_shards;
        let (standin, url) = self.start_standin(shards)?;
        let mut replicator = self.start_replicator(&url, mode)?;
        // Ready when every shard has been read once.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Self::stats(&url, SOURCE_REGION)?["get_records"]
            .as_u64()
            .unwrap_or(0)
            < u64::from(shards)
        {
            if Instant::now() > deadline {
                bail!("the replicator did not start reading within 60 s");
            }
            if let Some(status) = replicator.child.try_wait()? {
                bail!("the replicator exited ({status}) before reading");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let cpu_before = cpu_seconds(replicator.pid())?;
        let standin_cpu_before = cpu_seconds(standin.pid())?;
        let feed_started = Instant::now();
        let fed = control(
            &url,
            "/control/feed",
            json!({"region": SOURCE_REGION, "table": TABLE, "rate": rate, "seconds": self.args.lag_seconds, "size": self.args.size}),
        )?;
        let total = fed["feeding"].as_u64().unwrap_or(0);
        let timeout = Duration::from_secs_f64(self.args.lag_seconds + 60.0);
        let stats = Self::wait_for_writes(&url, total, timeout, &mut replicator)?;
        let cpu = cpu_seconds(replicator.pid())? - cpu_before;
        let rss = peak_rss_mb(replicator.pid())?;
        let standin_share = (cpu_seconds(standin.pid())? - standin_cpu_before)
            / feed_started.elapsed().as_secs_f64();
        replicator.stop()?;
        let source = Self::stats(&url, SOURCE_REGION)?;
        drop(standin);
        // The floor: a record waits for the next poll (at most one every 200 ms per shard), then half
        // the read's round trip and half the local write's.
        let floor = |p: f64| p * 200.0 + self.read_rtt_ms() / 2.0 + self.args.local_ms as f64 / 2.0;
        let lag = &stats["lag_ms"];
        let ratio = |key: &str, p: f64| lag[key].as_f64().unwrap_or(0.0) / floor(p);
        Ok(json!({
            "part": "lag",
            "mode": mode,
            "shards": shards,
            "rate": rate,
            "records": total,
            "lag_p50_ms": lag["p50"],
            "lag_p99_ms": lag["p99"],
            "lag_max_ms": lag["max"],
            "floor_p50_ms": floor(0.5),
            "floor_p99_ms": floor(0.99),
            "floor_max_ms": floor(1.0),
            "times_floor_p50": ratio("p50", 0.5),
            "times_floor_p99": ratio("p99", 0.99),
            "cpu_seconds": cpu,
            "cpu_microseconds_per_record": cpu / total.max(1) as f64 * 1e6,
            "peak_rss_mb": rss,
            "get_records_calls": source["get_records"],
            "throttled_reads": source["throttled_reads"],
            "standin_cpu_share": standin_share,
        }))
    }

    /// The stand-in's own ceiling: loads through the control endpoint, GetRecords pages and PutItem
    /// calls on keep-alive connections, with no latency and no limits.
    fn standin_ceiling(&self) -> anyhow::Result<Json> {
        let mut command = Command::new(&self.standin);
        command.args([
            "--listen",
            "127.0.0.1:0",
            "--latency-ms",
            "0",
            "--cross-region-ms",
            "0",
            "--get-records-per-second",
            "0",
        ]);
        let mut command = pin(&mut command, self.pinning.as_ref().map(|p| p.1.as_str()));
        command.stdout(Stdio::piped());
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let _running = Running {
            child,
            what: "standin",
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .context("no URL")?
            .to_owned();
        api(
            &url,
            SOURCE_REGION,
            "DynamoDB_20120810.CreateTable",
            json!({"TableName": TABLE, "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                   "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                   "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_AND_OLD_IMAGES"}}),
        )?;
        let count: u64 = if self.args.quick { 20_000 } else { 1_000_000 };
        let loaded = control(
            &url,
            "/control/load",
            json!({"region": SOURCE_REGION, "table": TABLE, "count": count, "size": self.args.size}),
        )?;
        let load_rate = count as f64 / loaded["seconds"].as_f64().unwrap_or(1.0).max(1e-6);
        // GetRecords: page through the whole shard.
        let describe = api(
            &url,
            SOURCE_REGION,
            "DynamoDB_20120810.DescribeTable",
            json!({"TableName": TABLE}),
        )?;
        let arn = describe["Table"]["LatestStreamArn"]
            .as_str()
            .context("no stream")?
            .to_owned();
        let stream = api(
            &url,
            SOURCE_REGION,
            "DynamoDBStreams_20120810.DescribeStream",
            json!({"StreamArn": arn}),
        )?;
        let shard = stream["StreamDescription"]["Shards"][0]["ShardId"]
            .as_str()
            .context("no shard")?
            .to_owned();
        let mut iterator = api(
            &url,
            SOURCE_REGION,
            "DynamoDBStreams_20120810.GetShardIterator",
            json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}),
        )?["ShardIterator"]
            .as_str()
            .context("no iterator")?
            .to_owned();
        let started = Instant::now();
        let mut read = 0u64;
        let mut connection = KeepAlive::connect(&url)?;
        while read < count {
            let page = connection.call(
                SOURCE_REGION,
                "DynamoDBStreams_20120810.GetRecords",
                &json!({"ShardIterator": iterator, "Limit": 1000}).to_string(),
            )?;
            // Counted without parsing the page, so the client costs little beside the server.
            let n = page.matches("\"eventID\"").count() as u64;
            if n == 0 {
                break;
            }
            read += n;
            let tail = page
                .rsplit_once("\"NextShardIterator\":\"")
                .context("no next iterator")?
                .1;
            iterator = tail
                .split('"')
                .next()
                .context("no next iterator")?
                .to_owned();
        }
        let read_rate = read as f64 / started.elapsed().as_secs_f64();
        // PutItem from 4 keep-alive connections for a fixed count.
        let puts_each: u64 = if self.args.quick { 2_000 } else { 50_000 };
        let started = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let url = url.clone();
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let mut connection = KeepAlive::connect(&url)?;
                    for i in 0..puts_each {
                        let body = json!({"TableName": TABLE, "Item": {"id": {"S": format!("p{t}-{i}")}, "v": {"S": "x".repeat(150)}}});
                        connection.call(SOURCE_REGION, "DynamoDB_20120810.PutItem", &body.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        let put_rate = (4 * puts_each) as f64 / started.elapsed().as_secs_f64();
        Ok(json!({
            "part": "standin",
            "load_records_per_second": load_rate,
            "get_records_records_per_second": read_rate,
            "put_items_per_second": put_rate,
        }))
    }
}

/// One keep-alive HTTP/1.1 connection for the ceiling measurement.
struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl KeepAlive {
    fn connect(url: &str) -> anyhow::Result<KeepAlive> {
        let host = url.trim_start_matches("http://").to_owned();
        let stream = TcpStream::connect(&host)?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            host,
        })
    }

    fn call(&mut self, region: &str, target: &str, body: &str) -> anyhow::Result<String> {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nX-Amz-Target: {target}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=b/20260101/{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.writer.write_all(request.as_bytes())?;
        let mut status = String::new();
        self.reader.read_line(&mut status)?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        if !status.contains(" 200 ") {
            bail!(
                "{target}: {} {}",
                status.trim(),
                String::from_utf8_lossy(&body)
            );
        }
        Ok(String::from_utf8(body)?)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn pinning(args: &Args) -> Option<(String, String)> {
    if args.no_pin || cpus() < 2 {
        return None;
    }
    let has_taskset = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_taskset {
        return None;
    }
    let others: Vec<String> = (0..cpus())
        .filter(|c| *c != args.cpu)
        .map(|c| c.to_string())
        .collect();
    Some((args.cpu.to_string(), others.join(",")))
}

fn f(value: &Json, digits: usize) -> String {
    match value.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".to_owned(),
    }
}

fn print_table(results: &[Json]) {
    let drains: Vec<&Json> = results.iter().filter(|r| r["part"] == "drain").collect();
    if !drains.is_empty() {
        println!("\nDrain of a backlog (replicator pinned to one CPU)\n");
        println!(
            "| mode | shards | records | records/s | floor records/s | x floor (time) | CPU s per million | µs CPU/record | peak RSS MB | GetRecords | throttled reads | stand-in CPU share |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in drains {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r["mode"].as_str().unwrap_or("?"),
                r["shards"],
                r["records"],
                f(&r["records_per_second"], 0),
                f(&r["floor_records_per_second"], 0),
                f(&r["times_floor"], 2),
                f(&r["cpu_seconds_per_million"], 1),
                f(&r["cpu_microseconds_per_record"], 1),
                f(&r["peak_rss_mb"], 1),
                r["get_records_calls"],
                r["throttled_reads"],
                f(&r["standin_cpu_share"], 2),
            );
        }
    }
    let lags: Vec<&Json> = results.iter().filter(|r| r["part"] == "lag").collect();
    if !lags.is_empty() {
        println!("\nSteady-state lag (write lag: source write to target write)\n");
        println!(
            "| mode | shards | rate/s | records | p50 ms | p99 ms | max ms | floor p50/p99/max ms | x floor p50 | x floor p99 | µs CPU/record | peak RSS MB | GetRecords | throttled reads | stand-in CPU share |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in lags {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {}/{}/{} | {} | {} | {} | {} | {} | {} | {} |",
                r["mode"].as_str().unwrap_or("?"),
                r["shards"],
                r["rate"],
                r["records"],
                r["lag_p50_ms"],
                r["lag_p99_ms"],
                r["lag_max_ms"],
                f(&r["floor_p50_ms"], 0),
                f(&r["floor_p99_ms"], 0),
                f(&r["floor_max_ms"], 0),
                f(&r["times_floor_p50"], 2),
                f(&r["times_floor_p99"], 2),
                f(&r["cpu_microseconds_per_record"], 1),
                f(&r["peak_rss_mb"], 1),
                r["get_records_calls"],
                r["throttled_reads"],
                f(&r["standin_cpu_share"], 2),
            );
        }
    }
    for r in results.iter().filter(|r| r["part"] == "standin") {
        println!(
            "\nThe stand-in's own ceiling (no latency, no limits): loads {} records/s, serves {} records/s through GetRecords, {} PutItem calls/s from 4 connections",
            f(&r["load_records_per_second"], 0),
            f(&r["get_records_records_per_second"], 0),
            f(&r["put_items_per_second"], 0),
        );
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.records = args.records.min(2_000);
        args.shards = vec![1, 4];
        args.rates = vec![500];
        args.lag_seconds = args.lag_seconds.min(2.0);
    }
    for mode in &args.modes {
        if mode != "one-way" && mode != "lww" {
            bail!("--modes: {mode:?} is not a mode; give one-way, lww or both");
        }
    }
    for part in &args.parts {
        if !["drain", "lag", "standin"].contains(&part.as_str()) {
            bail!("--parts: {part:?} is not a part; give drain, lag, standin");
        }
    }
    let bench = Bench {
        replicator: match &args.replicator {
            Some(p) => p.clone(),
            None => beside_me("replicator")?,
        },
        standin: match &args.standin {
            Some(p) => p.clone(),
            None => beside_me("standin")?,
        },
        pinning: pinning(&args),
        args: args.clone(),
    };
    for path in [&bench.replicator, &bench.standin] {
        if !Path::new(path).exists() {
            bail!("{} does not exist", path.display());
        }
    }
    match &bench.pinning {
        Some((rep, rest)) => eprintln!("replicator pinned to CPU {rep}, stand-in to CPUs {rest}"),
        None => eprintln!("nothing pinned (--no-pin, one CPU, or no taskset)"),
    }
    let mut results = Vec::new();
    let wants = |part: &str| args.parts.iter().any(|p| p == part);
    if wants("standin") {
        eprintln!("standin ceiling ...");
        results.push(bench.standin_ceiling()?);
    }
    for mode in &args.modes {
        if wants("drain") {
            for &shards in &args.shards {
                eprintln!("drain {mode} {shards} shards, {} records ...", args.records);
                results.push(bench.drain(mode, shards)?);
            }
        }
        if wants("lag") {
            for &rate in &args.rates {
                eprintln!("lag {mode} {rate} records/s for {} s ...", args.lag_seconds);
                results.push(bench.lag(mode, rate)?);
            }
        }
    }
    print_table(&results);
    let report = json!({
        "machine": {"cpus": cpus(), "pinned": bench.pinning.is_some()},
        "settings": {
            "cross_region_ms": args.cross_region_ms, "local_ms": args.local_ms, "size": args.size,
            "replicator_flags": args.replicator_flags, "quick": args.quick,
        },
        "results": results,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
