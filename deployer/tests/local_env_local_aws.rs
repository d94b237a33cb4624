//! The local two-region environment end to end, with the real binaries on loopback: `deployer local
//! up`, DNS answering the primary, a request served there, an outage of the primary (a write it
//! acknowledged just before is stranded while the outage lasts), clients moving to the secondary
//! within interval x threshold + TTL + 5 s, writes there reaching the primary within 10 s of recovery
//! (lww), `deployer failover` moving DNS without a fault, and `local down` leaving no process and no
//! listening socket (and the death of a child stops everything, saying which); `unhealthy` and
//! `slow` faults do what they say. Twice at once: alias records (TTL 60 s, the environment on the tests' local AWS)
//! and CNAME records with TTL 5 s (the environment starting its own local AWS); the CNAME clients
//! must move sooner.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{Workspace, edit};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::Value;
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B};

const INTERVAL: u64 = 10;
const THRESHOLD: u64 = 1;

/// One environment started by the test (stopped on drop if the test fails before `down`).
struct Env {
    label: &'static str,
    config: PathBuf,
    state: PathBuf,
    status: Value,
    key: String,
    aws: LocalAws,
    stopped: bool,
    own_aws: bool,
}

impl Drop for Env {
    fn drop(&mut self) {
        if !self.stopped {
            let state = self.state.display().to_string();
            let _ = deployer(
                &self.config,
                &["local", "--state-dir", &state, "down"],
                &[],
                &[],
            );
        }
    }
}

fn deployer(
    config: &Path,
    args: &[&str],
    env: &[(&str, String)],
    unset: &[&str],
) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deployer"));
    command.arg("--config").arg(config).args(args);
    for k in ["DEPLOYER_CONFIG", "DEPLOYER_LOCAL_STATE"]
        .iter()
        .chain(unset)
    {
        command.env_remove(k);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run the deployer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Env {
    /// Writes the config (this workspace's example with fast health checks, `dns` in place of its
    /// `record_style` line when given, and a
    /// cross-region delay long enough that an answer on its way is lost in the outage), and starts
    /// the environment in the background.
    fn up(label: &'static str, w: &Workspace, dns: &str, own_aws: bool) -> Env {
        let mut text = w.text();
        text = edit(&text, "interval = ", &format!("interval = {INTERVAL}"));
        text = edit(
            &text,
            "failure_threshold = ",
            &format!("failure_threshold = {THRESHOLD}"),
        );
        if !dns.is_empty() {
            text = edit(&text, "record_style = ", dns);
        }
        text.push_str("\n[local]\ncross_region_delay = \"1s\"\n");
        w.write(&text);
        let state = w.dir.join("state");
        let (env, unset) = cli_support::local_up_env(own_aws);
        let state_arg = state.display().to_string();
        let (code, stdout, stderr) = deployer(
            &w.config,
            &[
                "--json",
                "local",
                "--state-dir",
                &state_arg,
                "up",
                "--detach",
            ],
            &env,
            &unset,
        );
        assert_eq!(
            code, 0,
            "{label}: local up failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        let status: Value = serde_json::from_str(&stdout).unwrap();
        let aws = LocalAws::new(status["local_aws"].as_str().unwrap()).unwrap();
        let mut env = Env {
            label,
            config: w.config.clone(),
            state,
            status,
            key: String::new(),
            aws,
            stopped: false,
            own_aws,
        };
        env.key = env.local_status(true)["api_key"]
            .as_str()
            .unwrap()
            .to_owned();
        env
    }

    fn local_status(&self, show_key: bool) -> Value {
        let state = self.state.display().to_string();
        let mut args = vec!["--json", "local", "--state-dir", &state, "status"];
        if show_key {
            args.push("--show-api-key");
        }
        let (code, stdout, stderr) = deployer(&self.config, &args, &[], &[]);
        assert_eq!(code, 0, "{}: local status: {stderr}", self.label);
        serde_json::from_str(&stdout).unwrap()
    }

    fn fault(&self, region: &str, fault: &str) {
        let state = self.state.display().to_string();
        let (code, _, stderr) = deployer(
            &self.config,
            &[
                "local",
                "--state-dir",
                &state,
                "fault",
                "--region",
                region,
                fault,
            ],
            &[],
            &[],
        );
        assert_eq!(code, 0, "{}: fault {fault}: {stderr}", self.label);
    }

    fn dns(&self) -> SocketAddr {
        self.status["dns"].as_str().unwrap().parse().unwrap()
    }

    fn port(&self) -> u16 {
        let url = self.status["url"].as_str().unwrap();
        url.trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn domain(&self) -> String {
        self.status["domain_name"].as_str().unwrap().to_owned()
    }

    fn address(&self, region: &str) -> Ipv4Addr {
        let endpoint = self.status["regions"][region]["endpoint"].as_str().unwrap();
        let addr: SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
        match addr.ip() {
            std::net::IpAddr::V4(ip) => ip,
            other => panic!("{other} is not IPv4"),
        }
    }

    fn table(&self) -> String {
        self.status["regions"][REGION_A]["table"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// An API request to `ip` with the public name as Host: (status, region header, body).
    fn request(&self, ip: Ipv4Addr, method: &str, path: &str, body: &str) -> (u16, String, String) {
        http(
            SocketAddr::from((ip, self.port())),
            method,
            &self.domain(),
            path,
            &self.key,
            body,
        )
        .unwrap_or_else(|e| panic!("{}: {method} {path} on {ip}: {e}", self.label))
    }

    /// `GET /todos` on `ip` is answered 200 by `region`.
    fn served_by(&self, ip: Ipv4Addr, region: &str) {
        let (status, by, body) = self.request(ip, "GET", "/todos", "");
        assert_eq!(
            (status, by.as_str()),
            (200, region),
            "{}: {body}",
            self.label
        );
    }

    fn create(&self, ip: Ipv4Addr, text: &str) -> String {
        let (status, region, body) =
            self.request(ip, "POST", "/todos", &format!("{{\"text\":\"{text}\"}}"));
        assert_eq!(
            status, 201,
            "{}: create on {ip} ({region}): {body}",
            self.label
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    fn has_item(&self, region: &str, id: &str) -> bool {
        let client = self.aws.dynamodb(region);
        let table = self.table();
        let id = id.to_owned();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let out = client
                .get_item()
                .table_name(table)
                .key("id", aws_sdk_dynamodb::types::AttributeValue::S(id))
                .consistent_read(true)
                .send()
                .await
                .unwrap();
            out.item().is_some()
        })
    }

    /// Waits until `region`'s table has `id`; the seconds it took.
    fn wait_item(&self, region: &str, id: &str, within: Duration) -> f64 {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.has_item(region, id) {
                return start.elapsed().as_secs_f64();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{}: {id} did not reach {region} within {within:?}",
            self.label
        );
    }

    /// Measures how long a client that honours each answer's TTL keeps being sent to `from` after
    /// a fault at `t0`: it holds the answer it got at the fault until its TTL runs out.
    fn client_move_seconds(&self, to: Ipv4Addr, t0: Instant, within: Duration) -> f64 {
        let (mut addrs, mut ttl) = resolve(self.dns(), &self.domain());
        let mut expires = Instant::now() + Duration::from_secs(u64::from(ttl));
        while t0.elapsed() < within {
            if addrs.first() == Some(&to) {
                return t0.elapsed().as_secs_f64();
            }
            if Instant::now() >= expires {
                (addrs, ttl) = resolve(self.dns(), &self.domain());
                expires = Instant::now() + Duration::from_secs(u64::from(ttl));
                continue;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{}: clients were not sent to {to} within {within:?}",
            self.label
        );
    }

    /// `local down`, then: no process of the environment and no socket it listened on is left.
    fn down(mut self) {
        self.stopped = true;
        let status = self.local_status(false);
        let state = self.state.display().to_string();
        let (code, _, stderr) = deployer(
            &self.config,
            &["local", "--state-dir", &state, "down"],
            &[],
            &[],
        );
        assert_eq!(code, 0, "{}: local down: {stderr}", self.label);
        self.assert_gone(&status);
    }

    /// A replicator dies: the supervisor says which and how, and stops everything.
    fn child_dies(mut self) {
        self.stopped = true;
        let status = self.local_status(false);
        let victim = status["replicators"][0]["pid"].as_u64().unwrap();
        let supervisor = status["pid"].as_u64().unwrap();
        Command::new("kill")
            .arg("-KILL")
            .arg(victim.to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        while process_runs(supervisor) {
            assert!(
                Instant::now() < deadline,
                "{}: the supervisor outlived its replicator by 40 s",
                self.label
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self.state.join("local.log")).unwrap();
        assert!(
            log.contains(&format!("(pid {victim}) was killed by signal 9"))
                && log.contains("stopping everything"),
            "{}: the supervisor did not say which child died and how:\n{log}",
            self.label
        );
        self.assert_gone(&status);
    }

    /// No process of the environment and no socket it listened on is left.
    fn assert_gone(&self, status: &Value) {
        let mut pids: Vec<u64> = status["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect();
        pids.push(status["pid"].as_u64().unwrap());
        for pid in pids {
            assert!(
                !process_runs(pid),
                "{}: process {pid} still runs",
                self.label
            );
        }
        let mut addrs: Vec<String> = vec![
            status["dns"].as_str().unwrap().to_owned(),
            status["control"].as_str().unwrap().to_owned(),
            status["aws_endpoint"].as_str().unwrap().to_owned(),
        ];
        if self.own_aws {
            addrs.push(status["local_aws"].as_str().unwrap().to_owned());
        }
        for region in [REGION_A, REGION_B] {
            addrs.push(
                status["regions"][region]["endpoint"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
            addrs.push(
                status["regions"][region]["aws_endpoint"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        for r in status["replicators"].as_array().unwrap() {
            addrs.push(r["metrics"].as_str().unwrap().to_owned());
        }
        for addr in addrs {
            let addr: SocketAddr = addr.trim_start_matches("http://").parse().unwrap();
            assert!(
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
                "{}: {addr} still accepts connections after local down",
                self.label
            );
        }
        assert!(
            !self.state.join("state.json").exists(),
            "the state file is left"
        );
        let dns: SocketAddr = status["dns"].as_str().unwrap().parse().unwrap();
        assert!(
            try_resolve(dns, &self.domain()).is_err(),
            "{}: the DNS server still answers over UDP",
            self.label
        );
    }
}

/// Whether a process exists and is not a zombie.
fn process_runs(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or("gone");
    !(state == "gone" || state == "Z" || state == "X")
}

/// A DNS query over UDP: the addresses, and how long the answer may be cached (the shortest TTL
/// in it: a CNAME's own TTL bounds how long its target may be used for the name).
fn resolve(server: SocketAddr, name: &str) -> (Vec<Ipv4Addr>, u32) {
    try_resolve(server, name).unwrap_or_else(|e| panic!("DNS {server}: {e}"))
}

fn try_resolve(server: SocketAddr, name: &str) -> Result<(Vec<Ipv4Addr>, u32), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut q = Message::query();
    q.metadata.id = 4242;
    q.metadata.recursion_desired = true;
    q.queries.push(Query::query(
        Name::from_ascii(format!("{name}.")).unwrap(),
        RecordType::A,
    ));
    socket
        .send_to(&q.to_vec().unwrap(), server)
        .map_err(|e| e.to_string())?;
    let mut buffer = [0u8; 4096];
    let n = socket.recv(&mut buffer).map_err(|e| e.to_string())?;
    let answer = Message::from_vec(&buffer[..n]).unwrap();
    let addrs = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    let ttl = answer.answers.iter().map(|r| r.ttl).min().unwrap_or(0);
    Ok((addrs, ttl))
}

/// One HTTP/1.1 request (Connection: close): (status, x-tworegion-region, body).
fn http(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    key: &str,
    body: &str,
) -> Result<(u16, String, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let region = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-tworegion-region")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, region, body.to_owned()))
}

/// Waits until DNS answers `want` for the public name (queried directly, no cache).
fn wait_dns(env: &Env, want: Ipv4Addr, within: Duration, what: &str) {
    let start = Instant::now();
    while resolve(env.dns(), &env.domain()).0 != vec![want] {
        assert!(
            start.elapsed() < within,
            "{}: {what}: DNS did not answer {want} within {within:?}",
            env.label
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `unhealthy`: the health path fails, the API still serves, DNS moves; `slow`: requests wait.
fn unhealthy_and_slow(env: &Env) {
    let (primary, secondary) = (env.address(REGION_A), env.address(REGION_B));
    let detect = Duration::from_secs(INTERVAL * THRESHOLD + 5);
    env.fault(REGION_A, "unhealthy");
    let (status, _, _) = env.request(primary, "GET", "/todos/health", "");
    assert_eq!(status, 503, "{}: the health path still passes", env.label);
    env.served_by(primary, REGION_A);
    wait_dns(env, secondary, detect, "unhealthy primary");
    env.fault(REGION_A, "recover");
    wait_dns(env, primary, detect, "recovered primary");
    env.fault(REGION_A, "slow=400ms");
    let start = Instant::now();
    let (status, _, _) = env.request(primary, "GET", "/todos", "");
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert!(
        took >= Duration::from_millis(400),
        "{}: slow=400ms took {took:?}",
        env.label
    );
    env.fault(REGION_A, "recover");
    let start = Instant::now();
    env.request(primary, "GET", "/todos", "");
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "{}: still slow after recover",
        env.label
    );
}

/// The health check probes what users call: the region's own name under the custom domain, through
/// API Gateway's custom domain and its base path mapping. With the primary's mapping deleted by
/// hand the check fails and DNS moves; `deployer up --region` the primary puts it back (never
/// calling the secondary) and DNS returns.
fn a_broken_custom_domain_fails_over(env: &Env) {
    let (primary, secondary) = (env.address(REGION_A), env.address(REGION_B));
    let detect = Duration::from_secs(INTERVAL * THRESHOLD + 7);
    let probe = format!("{REGION_A}.{}", env.domain());
    let status = env.local_status(false);
    let target = status["regions"][REGION_A]["endpoint_check"]["target"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        target.starts_with(&format!("{probe}:443 /todos/health")),
        "{}: the primary's check probes {target:?}, not its custom domain",
        env.label
    );
    wait_dns(env, primary, detect, "the primary did not serve at first");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = aws_sdk_apigateway::Client::new(&env.aws.sdk_config(REGION_A));
    runtime
        .block_on(
            client
                .delete_base_path_mapping()
                .domain_name(&probe)
                .base_path("(none)")
                .send(),
        )
        .unwrap();
    wait_dns(
        env,
        secondary,
        detect,
        "a deleted base path mapping of the primary's custom domain did not fail over",
    );
    let (code, stdout, stderr) = deployer(
        &env.config,
        &["up", "--region", REGION_A],
        &env.aws.child_env(),
        &[],
    );
    assert_eq!(code, 0, "{}: up --region: {stdout} {stderr}", env.label);
    assert!(
        stdout.contains(&format!("create BasePathMapping/{REGION_A}/{probe}/(none)")),
        "{}: {stdout}",
        env.label
    );
    wait_dns(
        env,
        primary,
        detect,
        "the mended primary did not serve again",
    );
}

/// The outage scenario on one environment; returns the seconds clients took to move.
fn outage_scenario(env: &Env) -> f64 {
    let (primary, secondary) = (env.address(REGION_A), env.address(REGION_B));
    let (addrs, _) = resolve(env.dns(), &env.domain());
    assert_eq!(
        addrs,
        vec![primary],
        "{}: DNS answers the primary at first",
        env.label
    );
    env.served_by(primary, REGION_A);

    // A write acknowledged by the primary just before the outage.
    let stranded = env.create(primary, "acknowledged just before the outage");
    // Straight to the control API (no process to start in between): the replicator's read that
    // could carry the write is on its way for 0.5 s (half the 1 s cross-region delay), so the
    // outage begins before its answer arrives and the answer is lost.
    let control: SocketAddr = env.status["control"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let (status, _, body) = http(
        control,
        "POST",
        "control",
        "/fault",
        "",
        &format!("{{\"region\":\"{REGION_A}\",\"fault\":\"outage\"}}"),
    )
    .unwrap();
    assert_eq!(status, 200, "fault: {body}");
    let t0 = Instant::now();
    let bound =
        INTERVAL * THRESHOLD + u64::from(env.status["ttl_seconds"].as_u64().unwrap() as u32) + 5;
    let moved = env.client_move_seconds(secondary, t0, Duration::from_secs(bound));
    assert!(
        http(
            SocketAddr::from((primary, env.port())),
            "GET",
            &env.domain(),
            "/todos",
            &env.key,
            ""
        )
        .is_err(),
        "{}: the primary still accepts connections in its outage",
        env.label
    );
    env.served_by(secondary, REGION_B);
    let during = env.create(secondary, "written during the outage");
    assert!(
        !env.has_item(REGION_B, &stranded),
        "{}: the write acknowledged by the primary before the outage reached the secondary: the outage stranded nothing",
        env.label
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !env.has_item(REGION_B, &stranded),
        "{}: stranded write leaked during the outage",
        env.label
    );
    env.fault(REGION_A, "recover");
    let to_primary = env.wait_item(REGION_A, &during, Duration::from_secs(10));
    let to_secondary = env.wait_item(REGION_B, &stranded, Duration::from_secs(10));
    eprintln!(
        "{}: clients moved in {moved:.1} s; after recovery the secondary's write reached the primary in {to_primary:.1} s, the stranded one the secondary in {to_secondary:.1} s",
        env.label
    );
    moved
}

/// DNS answers `want` alone on every look for `span`.
fn dns_holds(env: &Env, want: Ipv4Addr, span: Duration, what: &str) {
    let t0 = Instant::now();
    while t0.elapsed() < span {
        let (answer, _) = resolve(env.dns(), &env.domain());
        assert_eq!(
            answer,
            vec![want],
            "{}: {what} ({:.1} s in)",
            env.label,
            t0.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The operator's worst day: the primary is really down and someone runs `failover --to` the
/// secondary. DNS must keep answering the secondary while the primary is down (an inverted check
/// of a dead region reads healthy: the old failover sent clients back to it), still after the
/// primary recovers (the switch holds), and move back only on `failback`.
fn failover_during_an_outage(env: &Env, aws_env: &[(&str, String)]) {
    let (primary, secondary) = (env.address(REGION_A), env.address(REGION_B));
    let bound = Duration::from_secs(INTERVAL * THRESHOLD + 5);
    wait_dns(
        env,
        primary,
        bound,
        "the primary did not serve after failback",
    );
    env.fault(REGION_A, "outage");
    wait_dns(
        env,
        secondary,
        bound,
        "DNS did not leave the primary in its outage",
    );
    // The operator's laptop is outside both regions: every call signed for the primary fails.
    let outside: Vec<(&str, String)> = aws_env
        .iter()
        .map(|(k, v)| match *k {
            "AWS_ENDPOINT_URL" => (*k, env.status["aws_endpoint"].as_str().unwrap().to_owned()),
            _ => (*k, v.clone()),
        })
        .collect();
    // `status` reports the primary as unreachable and still reports the secondary: exit 6.
    let (code, stdout, stderr) = deployer(&env.config, &["--json", "status"], &outside, &[]);
    assert_eq!(code, 6, "status with the primary down: {stdout} {stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        status["regions"][REGION_A]["unreachable"].is_string(),
        "{status}"
    );
    let b = &status["regions"][REGION_B];
    assert!(b["unreachable"].is_null(), "{status}");
    assert_eq!(b["resources_present"], b["resources_wanted"], "{status}");
    assert!(status["pending_changes"].is_null(), "{status}");
    // `failover` needs only Route 53: the primary being down does not stop it.
    let (code, stdout, stderr) =
        deployer(&env.config, &["failover", "--to", REGION_B], &outside, &[]);
    assert_eq!(code, 0, "failover during the outage: {stderr}");
    assert!(
        stdout.contains(&format!("{REGION_A}: switch off")),
        "{stdout}"
    );
    // `up --region` the survivor reconciles it alone (nothing to do here), never calling the primary.
    let (code, stdout, stderr) =
        deployer(&env.config, &["up", "--region", REGION_B], &outside, &[]);
    assert_eq!(
        code, 0,
        "up --region {REGION_B} during the outage: {stdout} {stderr}"
    );
    assert!(stdout.contains("Nothing to change"), "{stdout}");
    let (code, _, stderr) = deployer(&env.config, &["up"], &outside, &[]);
    assert_eq!(code, 1, "a full up reached the primary in its outage");
    assert!(stderr.contains(REGION_A), "{stderr}");
    dns_holds(
        env,
        secondary,
        Duration::from_secs(2 * INTERVAL * THRESHOLD + 5),
        "failover --to the secondary during the primary's outage sent clients to the dead primary",
    );
    let status = env.local_status(false);
    let a = &status["regions"][REGION_A];
    assert_eq!(a["endpoint_check"]["healthy"], false, "{a}");
    assert_eq!(a["healthy"], false, "{a}");
    env.fault(REGION_A, "recover");
    let t0 = Instant::now();
    while env.local_status(false)["regions"][REGION_A]["endpoint_check"]["healthy"] != true {
        assert!(
            t0.elapsed() < bound,
            "{}: the primary's endpoint check did not pass after recovery",
            env.label
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    dns_holds(
        env,
        secondary,
        Duration::from_secs(INTERVAL * THRESHOLD + 3),
        "the primary recovered and took clients back while its switch was off",
    );
    let (code, stdout, stderr) = deployer(&env.config, &["failback"], aws_env, &[]);
    assert_eq!(code, 0, "failback: {stderr}");
    assert!(
        stdout.contains(&format!("{REGION_A}: switch on")),
        "{stdout}"
    );
    wait_dns(
        env,
        primary,
        bound,
        "failback did not send clients to the primary",
    );
}

#[test]
fn a_region_fails_and_dns_moves_clients_with_nothing_acknowledged_lost() {
    let alias_w = Workspace::new();
    let cname_w = Workspace::new();
    let alias_thread = std::thread::spawn(move || {
        let env = Env::up("alias", &alias_w, "", false);
        assert_eq!(env.status["record_style"], "alias");
        assert_eq!(env.status["ttl_seconds"], 60);
        // A second environment on the same state folder, and a fault for a region not in the
        // config, are refused.
        let state = env.state.display().to_string();
        let (code, _, stderr) = deployer(
            &env.config,
            &["local", "--state-dir", &state, "up"],
            &[],
            &[],
        );
        assert_eq!(code, 1);
        assert!(
            stderr.contains("already running") && stderr.contains("local down"),
            "{stderr}"
        );
        let (code, _, stderr) = deployer(
            &env.config,
            &[
                "local",
                "--state-dir",
                &state,
                "fault",
                "--region",
                "eu-west-1",
                "outage",
            ],
            &[],
            &[],
        );
        assert_eq!(code, 1);
        assert!(stderr.contains("us-east-1 or us-west-2"), "{stderr}");
        let moved = outage_scenario(&env);

        // `deployer failover --to` the secondary, without any fault: DNS moves too.
        let (primary, secondary) = (env.address(REGION_A), env.address(REGION_B));
        let deadline = Instant::now() + Duration::from_secs(INTERVAL * THRESHOLD + 5);
        while resolve(env.dns(), &env.domain()).0 != vec![primary] {
            assert!(
                Instant::now() < deadline,
                "the primary did not serve again after recovery"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let aws_env: Vec<(&str, String)> = env.aws.child_env();
        let (code, _, stderr) =
            deployer(&env.config, &["failover", "--to", REGION_B], &aws_env, &[]);
        assert_eq!(code, 0, "failover: {stderr}");
        let t0 = Instant::now();
        while resolve(env.dns(), &env.domain()).0 != vec![secondary] {
            assert!(
                t0.elapsed() < Duration::from_secs(INTERVAL * THRESHOLD + 5),
                "deployer failover did not move DNS"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let (code, _, stderr) = deployer(&env.config, &["failback"], &aws_env, &[]);
        assert_eq!(code, 0, "failback: {stderr}");
        failover_during_an_outage(&env, &aws_env);
        env.down();
        (moved, alias_w)
    });
    let cname_thread = std::thread::spawn(move || {
        let env = Env::up("cname", &cname_w, "record_style = \"cname\"\nttl = 5", true);
        assert_eq!(env.status["record_style"], "cname");
        assert_eq!(env.status["ttl_seconds"], 5);
        unhealthy_and_slow(&env);
        a_broken_custom_domain_fails_over(&env);
        let moved = outage_scenario(&env);
        env.child_dies();
        (moved, cname_w)
    });
    let (alias_moved, _a) = alias_thread.join().unwrap();
    let (cname_moved, _c) = cname_thread.join().unwrap();
    eprintln!(
        "clients moved in {alias_moved:.1} s with alias records (TTL 60) and {cname_moved:.1} s with CNAME records (TTL 5)"
    );
    assert!(
        cname_moved < alias_moved,
        "CNAME records with TTL 5 moved clients in {cname_moved:.1} s, not sooner than alias records ({alias_moved:.1} s)"
    );
}

#[test]
fn a_config_it_cannot_serve_fails_at_start_naming_what_to_change() {
    let w = Workspace::new();
    let state = w.dir.join("state").display().to_string();
    let up = |text: &str| {
        w.write(text);
        deployer(&w.config, &["local", "--state-dir", &state, "up"], &[], &[])
    };
    // The artifact is missing.
    let (code, _, stderr) = up(&edit(
        &w.text(),
        "artifact = ",
        "artifact = \"missing.zip\"",
    ));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("lambda.artifact") && stderr.contains("missing.zip"),
        "{stderr}"
    );
    // The port is in use on a region's address.
    let taken = std::net::TcpListener::bind("127.0.0.12:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, _, stderr) = up(&format!("{}\n[local]\nport = {port}\n", w.text()));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("local.port") && stderr.contains(&format!("127.0.0.12:{port}")),
        "{stderr}"
    );
    // An address off loopback.
    let (code, _, stderr) = up(&format!(
        "{}\n[local]\naddresses = {{ us-east-1 = \"10.0.0.1\" }}\n",
        w.text()
    ));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("local.addresses.us-east-1") && stderr.contains("loopback"),
        "{stderr}"
    );
    // Nothing runs: status, fault and down say so.
    let (code, _, stderr) = deployer(
        &w.config,
        &["local", "--state-dir", &state, "status"],
        &[],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no local environment is running"),
        "{stderr}"
    );
    let (code, stdout, _) = deployer(
        &w.config,
        &["local", "--state-dir", &state, "down"],
        &[],
        &[],
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("Nothing is running"), "{stdout}");
    drop(taken);
}
