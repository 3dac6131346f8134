//! A local Apache Kafka cluster in KRaft mode, run with Java 17+ from the official Maven Central
//! artifacts.
//!
//! - **Fetch** (once per machine): `mvn dependency:copy-dependencies` on the `kafka/pom.xml` of
//!   this crate, into `<cache>/kafka-<version>/libs`, where `<cache>` is `$WEIR_CACHE_DIR`, else
//!   `$XDG_CACHE_HOME/weir`, else `~/.cache/weir` — outside the repository. A file lock keeps
//!   parallel test binaries from fetching twice.
//! - **Format**: `kafka.tools.StorageTool format` with one cluster id for all nodes.
//! - **Run**: `kafka.Kafka server.properties` per node, each node both broker and controller,
//!   on free loopback ports; the broker log goes to `<dir>/node-<id>/server.log`.
//! - **Lifetime**: every JVM is started by one long-lived spawner thread with
//!   `PR_SET_PDEATHSIG = SIGKILL`, so it dies with the test process even when the cluster is a
//!   never-dropped `static`; a dropped [`LocalCluster`] kills its JVMs at once.
//!
//! Single node: internal topics with replication factor 1 and min ISR 1. Several nodes:
//! replication factor 3 (or the node count) and min ISR 2, and any node can be killed (SIGKILL),
//! stopped (SIGTERM) and restarted.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::process::try_output_within;
use crate::StartError;

/// The Apache Kafka version the local backend runs.
pub const KAFKA_VERSION: &str = "4.1.1";
const POM: &str = include_str!("../kafka/pom.xml");

/// One node of a [`LocalCluster`].
#[derive(Debug)]
struct Node {
    id: u32,
    dir: PathBuf,
    port: u16,
    process: Option<Child>,
}

/// Listeners besides PLAINTEXT on a [`LocalCluster`] started with
/// [`start_secured`](LocalCluster::start_secured): TLS, and SASL/SCRAM-SHA-256 (without TLS).
#[derive(Clone, Debug)]
pub struct Secured {
    /// `host:port` of each node's TLS (`SSL`) listener.
    pub tls_bootstrap: String,
    /// The PEM certificate the TLS listeners present (self-signed, for `127.0.0.1`): the
    /// client's `ssl.ca.location`.
    pub ca_pem: PathBuf,
    /// `host:port` of each node's `SASL_PLAINTEXT` listener (mechanism `SCRAM-SHA-256`).
    pub scram_bootstrap: String,
    /// The SCRAM user the cluster knows.
    pub user: String,
    /// Its password.
    pub password: String,
}

/// A local KRaft cluster of JVM brokers. See the module documentation.
#[derive(Debug)]
pub struct LocalCluster {
    java: PathBuf,
    classpath: String,
    root: PathBuf,
    nodes: Vec<Node>,
    secured: Option<Box<Secured>>,
}

impl LocalCluster {
    /// Fetches Kafka if needed, formats storage and starts `nodes` nodes; returns once every
    /// broker answers metadata requests.
    pub fn start(nodes: usize) -> Result<Self, StartError> {
        Self::start_with(nodes, false)
    }

    /// [`start`](Self::start) with a TLS listener and a SASL/SCRAM listener on every node
    /// besides the PLAINTEXT one (see [`secured`](Self::secured)).
    pub fn start_secured(nodes: usize) -> Result<Self, StartError> {
        Self::start_with(nodes, true)
    }

    /// The TLS and SCRAM listeners, when started with [`start_secured`](Self::start_secured).
    pub fn secured(&self) -> Option<&Secured> {
        self.secured.as_deref()
    }

    fn start_with(nodes: usize, secure: bool) -> Result<Self, StartError> {
        assert!(nodes >= 1, "a cluster needs at least one node");
        let java = find_java()?;
        let libs = ensure_kafka_jars()?;
        let classpath = format!("{}/*", libs.display());
        let root = std::env::temp_dir().join(format!(
            "weir-kafka-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&root).map_err(|e| StartError::io(&root, e))?;

        let ports: Vec<(u16, u16)> = free_ports(2 * nodes)
            .chunks(2)
            .map(|p| (p[0], p[1]))
            .collect();
        let secured_ports: Vec<(u16, u16)> = if secure {
            free_ports(2 * nodes)
                .chunks(2)
                .map(|p| (p[0], p[1]))
                .collect()
        } else {
            Vec::new()
        };
        let tls = if secure {
            Some(self_signed(&java, &root)?)
        } else {
            None
        };
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = run_java(
            &java,
            &classpath,
            &["kafka.tools.StorageTool", "random-uuid"],
        )?
        .trim()
        .to_string();
        let rf = nodes.min(3);
        let min_isr = min_isr(nodes);

        let secured = tls.as_ref().map(|(_, ca)| Secured {
            tls_bootstrap: secured_ports
                .iter()
                .map(|(t, _)| format!("127.0.0.1:{t}"))
                .collect::<Vec<_>>()
                .join(","),
            ca_pem: ca.clone(),
            scram_bootstrap: secured_ports
                .iter()
                .map(|(_, s)| format!("127.0.0.1:{s}"))
                .collect::<Vec<_>>()
                .join(","),
            user: "weir".into(),
            password: "weir-secret".into(),
        });
        let mut cluster = Self {
            java,
            classpath,
            root: root.clone(),
            nodes: Vec::new(),
            secured: secured.clone().map(Box::new),
        };
        for (i, (port, controller_port)) in ports.iter().enumerate() {
            let id = (i + 1) as u32;
            let dir = root.join(format!("node-{id}"));
            fs::create_dir_all(dir.join("data")).map_err(|e| StartError::io(&dir, e))?;
            let mut props =
                server_properties(id, *port, *controller_port, &voters, &dir, rf, min_isr);
            if let Some((keystore, _)) = &tls {
                let (tls_port, scram_port) = secured_ports[i];
                props = secure_properties(
                    &props,
                    *port,
                    *controller_port,
                    tls_port,
                    scram_port,
                    keystore,
                );
            }
            write(&dir.join("server.properties"), &props)?;
            write(&dir.join("log4j2.properties"), &log4j(&dir))?;
            let props_path = dir.join("server.properties").display().to_string();
            let mut format = vec![
                "kafka.tools.StorageTool",
                "format",
                "-t",
                &cluster_id,
                "-c",
                &props_path,
            ];
            let scram = secured
                .as_ref()
                .map(|s| format!("SCRAM-SHA-256=[name={},password={}]", s.user, s.password));
            if let Some(scram) = &scram {
                format.extend(["--add-scram", scram.as_str()]);
            }
            run_java(&cluster.java, &cluster.classpath, &format)?;
            cluster.nodes.push(Node {
                id,
                dir,
                port: *port,
                process: None,
            });
        }
        for i in 0..nodes {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(nodes, Duration::from_secs(90))?;
        Ok(cluster)
    }

    /// `host:port,...` of every node.
    pub fn bootstrap_servers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The process ids of the running brokers (for CPU accounting in benchmarks).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.process.as_ref().map(Child::id))
            .collect()
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Where node `index`'s broker log is.
    pub fn log_file(&self, index: usize) -> PathBuf {
        self.nodes[index].dir.join("server.log")
    }

    /// The batches of `topic`'s `partition` as the first node holding a replica has them on
    /// disk, from Kafka's `DumpLogSegments`: one `baseOffset: ...` line per batch (producer id
    /// and epoch, base sequence, transactional or not) and one `endTxnMarker: COMMIT|ABORT`
    /// line per transaction marker — what a failure report needs to tell which producer wrote
    /// what, and which transaction made it visible. `Err` says why there is no dump.
    pub fn dump_partition(&self, topic: &str, partition: i32) -> Result<String, StartError> {
        let name = format!("{topic}-{partition}");
        for node in &self.nodes {
            let dir = node.dir.join("data").join(&name);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let mut segments: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .map(|p| p.display().to_string())
                .collect();
            if segments.is_empty() {
                continue;
            }
            segments.sort();
            let out = run_java(
                &self.java,
                &self.classpath,
                &[
                    "kafka.tools.DumpLogSegments",
                    "--deep-iteration",
                    "--files",
                    &segments.join(","),
                ],
            )?;
            let lines: Vec<&str> = out
                .lines()
                .filter(|l| l.starts_with("baseOffset:") || l.contains("endTxnMarker"))
                .collect();
            return Ok(format!("{name} on node {}:\n{}", node.id, lines.join("\n")));
        }
        Err(StartError::Local {
            what: format!("dumping {name}"),
            detail: "no node holds a replica of it".into(),
        })
    }

    fn spawn(&mut self, index: usize) -> Result<(), StartError> {
        let node = &self.nodes[index];
        let stdout =
            File::create(node.dir.join("stdout.log")).map_err(|e| StartError::io(&node.dir, e))?;
        let stderr = stdout
            .try_clone()
            .map_err(|e| StartError::io(&node.dir, e))?;
        let mut cmd = Command::new(&self.java);
        cmd.arg("-Xms256m")
            .arg("-Xmx1g")
            .arg("-XX:+UseG1GC")
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                node.dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(&self.classpath)
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = spawn_guarded(cmd).map_err(|e| StartError::Local {
            what: format!("starting the broker JVM ({})", self.java.display()),
            detail: e.to_string(),
        })?;
        self.nodes[index].process = Some(child);
        Ok(())
    }

    /// A client for metadata requests to this cluster, logging at syslog `log_level`.
    fn metadata_client(
        &self,
        log_level: &str,
    ) -> Result<rdkafka::consumer::BaseConsumer, StartError> {
        weir_kafka::clients::base_config(&self.bootstrap_servers())
            .set("log_level", log_level)
            .create()
            .map_err(|e| StartError::Local {
                what: "creating a client".into(),
                detail: e.to_string(),
            })
    }

    fn wait_ready(&mut self, expected: usize, timeout: Duration) -> Result<(), StartError> {
        let deadline = Instant::now() + timeout;
        let client = self.metadata_client("3")?;
        use rdkafka::consumer::Consumer;
        loop {
            for n in &mut self.nodes {
                if let Some(p) = &mut n.process {
                    if let Ok(Some(status)) = p.try_wait() {
                        return Err(StartError::Local {
                            what: format!("broker node {} exited during start-up ({status})", n.id),
                            detail: tail(&n.dir.join("server.log"), &n.dir.join("stdout.log")),
                        });
                    }
                }
            }
            if let Ok(md) = client.fetch_metadata(None, Duration::from_secs(2)) {
                if md.brokers().len() >= expected {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(StartError::Local {
                    what: format!("the cluster did not answer within {timeout:?}"),
                    detail: tail(&self.log_file(0), &self.nodes[0].dir.join("stdout.log")),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills node `index` with SIGKILL (a crash: no controlled shutdown).
    pub fn kill(&mut self, index: usize) {
        self.signal(index, libc::SIGKILL);
    }

    /// Stops node `index` with SIGTERM (a controlled shutdown) and waits for it to exit.
    pub fn stop(&mut self, index: usize) {
        self.signal(index, libc::SIGTERM);
    }

    /// Starts node `index` again (after [`kill`](Self::kill) or [`stop`](Self::stop)), waits
    /// until every node answers, then until no partition is under-replicated
    /// ([`wait_in_sync`](Self::wait_in_sync)).
    pub fn restart(&mut self, index: usize) -> Result<(), StartError> {
        if self.nodes[index].process.is_none() {
            self.spawn(index)?;
        }
        self.wait_ready(self.nodes.len(), Duration::from_secs(90))?;
        self.wait_in_sync(Duration::from_secs(120))
    }

    /// Starts node `index` again while other nodes may still be down: waits until every node
    /// that runs answers, not for replicas to catch up.
    pub fn start_again(&mut self, index: usize) -> Result<(), StartError> {
        if self.nodes[index].process.is_none() {
            self.spawn(index)?;
        }
        let running = self.nodes.iter().filter(|n| n.process.is_some()).count();
        self.wait_ready(running, Duration::from_secs(90))
    }

    /// After [`kill`](Self::kill) or [`stop`](Self::stop): waits until the cluster has noticed —
    /// node `index` is no longer in the metadata (the controller fenced it, after the brokers'
    /// `broker.session.timeout.ms`) — and returns how long that took.
    pub fn wait_gone(&self, index: usize, timeout: Duration) -> Result<Duration, StartError> {
        use rdkafka::consumer::Consumer;
        let started = Instant::now();
        let id = self.nodes[index].id as i32;
        let client = self.metadata_client("0")?;
        loop {
            if let Ok(md) = client.fetch_metadata(None, Duration::from_secs(5)) {
                if md.brokers().iter().all(|b| b.id() != id) {
                    return Ok(started.elapsed());
                }
            }
            if started.elapsed() > timeout {
                return Err(StartError::Local {
                    what: format!("node {id} was still in the metadata {timeout:?} after it died"),
                    detail: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether node `index` runs.
    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index].process.is_some()
    }

    /// Waits until every partition of every topic (internal ones included) has its full
    /// replica set in sync — no under-replicated partitions left.
    pub fn wait_in_sync(&self, timeout: Duration) -> Result<(), StartError> {
        self.wait_partitions(timeout, |p| p.isr().len() < p.replicas().len())
            .map(drop)
            .map_err(|detail| StartError::Local {
                what: format!("partitions still under-replicated after {timeout:?}"),
                detail,
            })
    }

    /// Waits until the cluster can take writes again after an outage: every partition of every
    /// topic (internal ones included) has a leader on a running node and at least
    /// `min.insync.replicas` replicas in sync. With two of three nodes down the controller
    /// quorum is lost, so partition leadership and ISR changes wait for it to form again; how
    /// long that takes after a node returns is Kafka's business, and a test of how fast weir
    /// resumes counts from here. Returns how long it waited.
    pub fn wait_writable(&self, timeout: Duration) -> Result<Duration, StartError> {
        let min_isr = min_isr(self.nodes.len());
        let running: Vec<i32> = self
            .nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| n.id as i32)
            .collect();
        self.wait_partitions(timeout, |p| {
            !running.contains(&p.leader()) || p.isr().len() < min_isr
        })
        .map_err(|detail| StartError::Local {
            what: format!(
                "the cluster could not take writes {timeout:?} after the outage \
                 (running nodes {running:?})"
            ),
            detail,
        })
    }

    /// Polls the metadata of every topic until no partition is `blocked`; returns how long
    /// that took, or, past `timeout`, the blocked partitions (leader and ISR of each).
    fn wait_partitions(
        &self,
        timeout: Duration,
        blocked: impl Fn(&rdkafka::metadata::MetadataPartition) -> bool,
    ) -> Result<Duration, String> {
        use rdkafka::consumer::Consumer;
        let started = Instant::now();
        let client = self.metadata_client("3").map_err(|e| e.to_string())?;
        loop {
            let left: Vec<String> = match client.fetch_metadata(None, Duration::from_secs(5)) {
                Ok(md) => md
                    .topics()
                    .iter()
                    .flat_map(|t| {
                        t.partitions().iter().filter(|p| blocked(p)).map(move |p| {
                            format!(
                                "{}-{} (leader {}, isr {:?})",
                                t.name(),
                                p.id(),
                                p.leader(),
                                p.isr()
                            )
                        })
                    })
                    .collect(),
                Err(e) => vec![format!("metadata: {e}")],
            };
            if left.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(left.join(", "));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn signal(&mut self, index: usize, signal: i32) {
        if let Some(mut child) = self.nodes[index].process.take() {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on the pid of a child we own and have not reaped yet.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
            // A controlled shutdown that cannot finish (no controller quorum) must not hang
            // the test: SIGKILL after a minute.
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "weir-testkit: node {} did not exit within 60 s of signal {signal}; SIGKILL",
                    self.nodes[index].id
                );
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.signal(i, libc::SIGKILL);
        }
        if std::thread::panicking() {
            // A failing test: the brokers' logs are what explains it.
            eprintln!(
                "weir-testkit: the failed test's cluster is kept for its logs: {}/node-*/server.log",
                self.root.display()
            );
            return;
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// `min.insync.replicas` of a cluster of `nodes` (every topic, internal ones included).
fn min_isr(nodes: usize) -> usize {
    if nodes >= 3 {
        2
    } else {
        1
    }
}

fn server_properties(
    id: u32,
    port: u16,
    controller_port: u16,
    voters: &str,
    dir: &Path,
    rf: usize,
    min_isr: usize,
) -> String {
    let mut s = String::new();
    let data = dir.join("data");
    let _ = writeln!(
        s,
        "process.roles=broker,controller\n\
         node.id={id}\n\
         controller.quorum.voters={voters}\n\
         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
         controller.listener.names=CONTROLLER\n\
         inter.broker.listener.name=PLAINTEXT\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         log.dirs={data}\n\
         num.partitions=1\n\
         auto.create.topics.enable=false\n\
         default.replication.factor={rf}\n\
         min.insync.replicas={min_isr}\n\
         offsets.topic.replication.factor={rf}\n\
         offsets.topic.num.partitions=10\n\
         transaction.state.log.replication.factor={rf}\n\
         transaction.state.log.min.isr={min_isr}\n\
         transaction.state.log.num.partitions=10\n\
         share.coordinator.state.topic.replication.factor={rf}\n\
         share.coordinator.state.topic.min.isr={min_isr}\n\
         group.initial.rebalance.delay.ms=0\n\
         transaction.abort.timed.out.transaction.cleanup.interval.ms=5000\n\
         log.segment.bytes=67108864",
        data = data.display()
    );
    s
}

/// The password of the test kit's self-signed keystore.
const KEYSTORE_PASSWORD: &str = "weir-testkit";

/// A self-signed certificate for `127.0.0.1` and `localhost` (JDK `keytool`): the PKCS12
/// keystore the brokers present, and its certificate as PEM for clients.
fn self_signed(java: &Path, root: &Path) -> Result<(PathBuf, PathBuf), StartError> {
    let keytool = java.with_file_name("keytool");
    let keytool = if keytool.exists() {
        keytool
    } else {
        PathBuf::from("keytool")
    };
    let (keystore, pem) = (root.join("broker.p12"), root.join("ca.pem"));
    let run = |args: &[&str]| -> Result<(), StartError> {
        let out = try_output_within(Command::new(&keytool).args(args), Duration::from_secs(60))
            .map_err(|e| StartError::Local {
                what: format!("keytool {}", args.join(" ")),
                detail: e,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(StartError::Local {
                what: format!("keytool {} failed ({})", args.join(" "), out.status),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    };
    let (ks, p) = (keystore.display().to_string(), pem.display().to_string());
    run(&[
        "-genkeypair",
        "-alias",
        "broker",
        "-keyalg",
        "RSA",
        "-keysize",
        "2048",
        "-validity",
        "7",
        "-dname",
        "CN=localhost",
        "-ext",
        "SAN=ip:127.0.0.1,dns:localhost",
        "-ext",
        "BC=ca:true",
        "-keystore",
        &ks,
        "-storetype",
        "PKCS12",
        "-storepass",
        KEYSTORE_PASSWORD,
        "-keypass",
        KEYSTORE_PASSWORD,
    ])?;
    run(&[
        "-exportcert",
        "-rfc",
        "-alias",
        "broker",
        "-keystore",
        &ks,
        "-storepass",
        KEYSTORE_PASSWORD,
        "-file",
        &p,
    ])?;
    Ok((keystore, pem))
}

/// `props` with a TLS listener on `tls_port` and a SASL/SCRAM one on `scram_port` besides
/// PLAINTEXT (which the brokers keep using between themselves).
fn secure_properties(
    props: &str,
    port: u16,
    controller_port: u16,
    tls_port: u16,
    scram_port: u16,
    keystore: &Path,
) -> String {
    let mut out = String::new();
    for line in props.lines() {
        let line = if line.starts_with("listeners=") {
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port},SSL://127.0.0.1:{tls_port},SASL_PLAINTEXT://127.0.0.1:{scram_port}"
            )
        } else if line.starts_with("advertised.listeners=") {
            format!(
                "advertised.listeners=PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{tls_port},SASL_PLAINTEXT://127.0.0.1:{scram_port}"
            )
        } else if line.starts_with("listener.security.protocol.map=") {
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT".to_string()
        } else {
            line.to_string()
        };
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "ssl.keystore.location={}\n\
         ssl.keystore.type=PKCS12\n\
         ssl.keystore.password={KEYSTORE_PASSWORD}\n\
         ssl.key.password={KEYSTORE_PASSWORD}\n\
         ssl.client.auth=none\n\
         sasl.enabled.mechanisms=SCRAM-SHA-256\n\
         listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;",
        keystore.display()
    );
    out
}

fn log4j(dir: &Path) -> String {
    format!(
        "rootLogger.level = INFO\n\
         rootLogger.appenderRef.file.ref = F\n\
         appender.file.type = File\n\
         appender.file.name = F\n\
         appender.file.fileName = {}\n\
         appender.file.layout.type = PatternLayout\n\
         appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
         logger.kafka.name = kafka\n\
         logger.kafka.level = INFO\n\
         logger.state.name = state.change.logger\n\
         logger.state.level = WARN\n",
        dir.join("server.log").display()
    )
}

fn write(path: &Path, text: &str) -> Result<(), StartError> {
    fs::write(path, text).map_err(|e| StartError::io(path, e))
}

/// `n` distinct free loopback ports. The listeners are held until all are chosen: one at a
/// time, the system may hand out the port it has just released, and a broker whose two
/// listeners got the same port refuses to format its storage (seen once in the suite).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("no free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound listener's address").port())
        .collect()
}

fn tail(log: &Path, stdout: &Path) -> String {
    let read = |p: &Path| -> Vec<String> {
        File::open(p)
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default()
    };
    let mut lines = read(log);
    lines.extend(read(stdout));
    let start = lines.len().saturating_sub(25);
    format!(
        "last lines of {} and {}:\n{}",
        log.display(),
        stdout.display(),
        lines[start..].join("\n")
    )
}

/// `$JAVA_HOME/bin/java`, else `java` on the PATH; it must be Java 17 or newer.
fn find_java() -> Result<PathBuf, StartError> {
    let java = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("java"));
    let out = try_output_within(Command::new(&java).arg("-version"), Duration::from_secs(60))
        .map_err(|e| StartError::Missing {
            tool: "Java 17+".into(),
            detail: format!("`{} -version` failed: {e}", java.display()),
        })?;
    let text = String::from_utf8_lossy(&out.stderr);
    let major = text
        .split('"')
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if major < 17 {
        return Err(StartError::Missing {
            tool: "Java 17+".into(),
            detail: format!(
                "{} reports: {}",
                java.display(),
                text.lines().next().unwrap_or("?")
            ),
        });
    }
    Ok(java)
}

fn run_java(java: &Path, classpath: &str, args: &[&str]) -> Result<String, StartError> {
    let out = try_output_within(
        Command::new(java).arg("-cp").arg(classpath).args(args),
        Duration::from_secs(180),
    )
    .map_err(|e| StartError::Local {
        what: format!("running {}", args.join(" ")),
        detail: e,
    })?;
    if !out.status.success() {
        return Err(StartError::Local {
            what: format!("`java {}` failed ({})", args.join(" "), out.status),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cache directory for the Kafka jars (outside the repository).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WEIR_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("weir");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/weir")
}

/// Returns the directory of the Kafka jars, fetching them with Maven on first use.
pub fn ensure_kafka_jars() -> Result<PathBuf, StartError> {
    let dir = cache_dir().join(format!("kafka-{KAFKA_VERSION}"));
    let libs = dir.join("libs");
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(libs);
    }
    fs::create_dir_all(&dir).map_err(|e| StartError::io(&dir, e))?;
    let lock = File::create(dir.join(".lock")).map_err(|e| StartError::io(&dir, e))?;
    lock.lock().map_err(|e| StartError::io(&dir, e))?;
    if done.exists() {
        return Ok(libs);
    }
    let pom = dir.join("pom.xml");
    write(&pom, POM)?;
    let staging = dir.join("libs.partial");
    let _ = fs::remove_dir_all(&staging);
    eprintln!(
        "weir-testkit: fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {} (once)",
        libs.display()
    );
    // A deadline, so a stalled download fails the set-up instead of hanging it.
    let out = try_output_within(
        Command::new("mvn")
            .args(["-B", "-q", "-f"])
            .arg(&pom)
            .arg("dependency:copy-dependencies")
            .arg(format!("-DoutputDirectory={}", staging.display()))
            .arg("-DincludeScope=runtime")
            .arg(format!("-Dkafka.version={KAFKA_VERSION}")),
        Duration::from_secs(900),
    )
    .map_err(|e| StartError::Missing {
        tool: "Maven (mvn)".into(),
        detail: format!("running mvn failed: {e}"),
    })?;
    if !out.status.success() {
        return Err(StartError::Local {
            what: format!("`mvn dependency:copy-dependencies` for Kafka {KAFKA_VERSION} failed ({})", out.status),
            detail: format!(
                "{}{}\nIs Maven Central reachable? Fix that, or set WEIR_KAFKA_BOOTSTRAP to a running cluster.",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    let _ = fs::remove_dir_all(&libs);
    fs::rename(&staging, &libs).map_err(|e| StartError::io(&libs, e))?;
    File::create(&done).map_err(|e| StartError::io(&done, e))?;
    Ok(libs)
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from one thread that lives as long as the process, with the parent-death signal
/// set to SIGKILL: the child dies with this process even if nothing ever drops it.
fn spawn_guarded(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("weir-testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    set_parent_death_signal(&mut cmd);
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        Mutex::new(tx)
    });
    let (reply, result) = mpsc::channel();
    spawner
        .lock()
        .expect("poisoned")
        .send((cmd, reply))
        .expect("the spawner thread is gone");
    result.recv().expect("the spawner thread is gone")
}

#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::free_ports;

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(16);
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 16, "{ports:?}");
    }
}
