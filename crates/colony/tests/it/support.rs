//! Test fixtures: start agents, talk HTTP, await conditions with deadlines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn colony_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_colony"))
}

/// A gRPC channel to `endpoint` (`host:port`), connected.
pub async fn grpc_channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// A loopback address with a port nothing listens on now, and that no earlier call in this
/// test process returned: the kernel may hand a released port out again, and two agents
/// started by parallel tests (or one agent's HTTP and another's RPC address) must not be
/// given the same one before either binds it.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local addr");
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// Polls `condition` until it holds or `deadline` passes.
pub fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", self.text()))
    }

    pub fn index(&self) -> u64 {
        self.header("x-consul-index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// The value of metric `name` in a Prometheus text exposition (`None` when absent).
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(stream, addr, method, path, body)
}

/// One HTTP/1.1 request that gives up after `timeout` (to connect, and to answer).
pub fn http_with_timeout(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    exchange(stream, addr, method, path, body)
}

fn exchange(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Response> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// A running agent, killed on drop.
pub struct Agent {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub child: Child,
    pub log: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Agent {
    /// Starts `colony agent --dev` on a fresh port and data dir; waits until it answers.
    pub fn start() -> Agent {
        let temp = tempfile::tempdir().expect("tempdir");
        let data_dir = temp.path().join("data");
        let mut agent = Agent::start_in(&data_dir, &[]);
        agent._temp = Some(temp);
        agent
    }

    /// Starts a client agent (no --dev, no --server) named `node` with extra arguments.
    pub fn start_client(node: &str, extra: &[&str]) -> Agent {
        let temp = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        let log = temp.path().join("agent.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(colony_bin())
            .args(["agent", "--node", node, "--http-addr", &addr.to_string()])
            .args(["--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(log_file.try_clone().expect("clone"))
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn colony agent");
        let mut agent = Agent {
            addr,
            data_dir: temp.path().to_path_buf(),
            child,
            log,
            _temp: Some(temp),
        };
        agent.wait_ready();
        agent
    }

    /// Starts an agent on `data_dir` with extra arguments.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Agent {
        let addr = free_addr();
        let log = data_dir.with_extension(format!("{}.log", addr.port()));
        let child = spawn_agent(addr, data_dir, extra, &log);
        let mut agent = Agent {
            addr,
            data_dir: data_dir.to_path_buf(),
            child,
            log,
            _temp: None,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&mut self) {
        let addr = self.addr;
        let start = Instant::now();
        loop {
            if let Ok(response) = http(addr, "GET", "/v1/status/leader", b"")
                && response.status == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited with {status}: {}", self.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent not ready: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Response {
        http(self.addr, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e}; log: {}", self.log_text()))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, b"")
    }

    pub fn put(&self, path: &str, body: &[u8]) -> Response {
        self.request("PUT", path, body)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "agent ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_agent(addr: SocketAddr, data_dir: &Path, extra: &[&str], log: &Path) -> Child {
    let log_file = std::fs::File::create(log).expect("log file");
    Command::new(colony_bin())
        .args([
            "agent",
            "--dev",
            "--node",
            "test-node",
            "--http-addr",
            &addr.to_string(),
            "--bind",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(if extra.contains(&"--grpc-addr") {
            &[][..]
        } else {
            &["--grpc-addr", "127.0.0.1:0"][..]
        })
        .args(extra)
        .stdout(log_file.try_clone().expect("clone"))
        .stderr(log_file)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn colony agent")
}

/// Runs `colony <args>` as a client of `addr`; returns (exit code, stdout, stderr).
pub fn cli(addr: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(colony_bin())
        .args(args)
        .env("COLONY_HTTP_ADDR", addr.to_string())
        .output()
        .expect("run colony");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// A tmpfs mounted for one test, unmounted on drop.
pub struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs with `options` (e.g. `size=64m`, `ro`) at `dir`; `None` without the
/// privilege to mount.
pub fn mount_tmpfs(dir: &Path, options: &str) -> Option<Mount> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .status();
    match status {
        Ok(s) if s.success() => Some(Mount(dir.to_path_buf())),
        _ => None,
    }
}
