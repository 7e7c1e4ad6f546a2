//! PostgreSQL going away under a running job (a restart, a failover): the
//! job's end is still recorded once the server is back, so a job never stays
//! `running` after its process gave up. The outage is made by a TCP proxy
//! in front of the test database (`DATAFACTORY_TEST_POSTGRES`) that cuts
//! every connection and refuses new ones for a moment, as a restart does;
//! the database itself is shared and never restarted here
//! (`scripts/faults.py` restarts a PostgreSQL of its own).

use datafactory_core::config::StoreConfig;
use datafactory_store::Store;
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP proxy to `upstream` that can cut its connections and refuse new ones.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (d, o) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    // Refused: closed before the server's greeting.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                o.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, down, open }
    }

    /// Cuts every connection and refuses new ones for `outage`.
    fn restart(&self, outage: Duration) {
        self.down.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let down = self.down.clone();
        std::thread::spawn(move || {
            std::thread::sleep(outage);
            down.store(false, Ordering::SeqCst);
        });
    }
}

fn test_postgres() -> Option<String> {
    match std::env::var("DATAFACTORY_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("DATAFACTORY_TEST_POSTGRES is not set: under CI the PostgreSQL tests must run")
        }
        _ => {
            eprintln!("not run: set DATAFACTORY_TEST_POSTGRES (see scripts/start-test-postgres.sh)");
            None
        }
    }
}

#[test]
fn a_jobs_end_is_recorded_after_the_server_comes_back() {
    let Some(url) = test_postgres() else { return };
    let schema = "outage_job_end";
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();

    // The proxy stands where the server's host and port were.
    let config: postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("a TCP host is needed, not {other:?}"),
    };
    let upstream = (host.as_str(), config.get_ports()[0]).to_socket_addrs().unwrap().next().unwrap();
    let proxy = Proxy::start(upstream);
    let rest = url.split_once('@').map_or(url.as_str(), |(_, r)| r);
    let (_, path) = rest.split_once('/').unwrap();
    let user = config.get_user().unwrap();
    let proxied = format!("postgres://{user}@127.0.0.1:{}/{path}", proxy.port);
    let settings = StoreConfig {
        backend: "postgres".into(),
        url: proxied,
        schema: schema.into(),
        connect_timeout_seconds: 2,
        ..Default::default()
    };
    let store = Store::open_postgres(&settings).unwrap();
    let job = store.create_job("ingest", Some("default")).unwrap();

    // The server "restarts" while the job runs; its process records the end.
    proxy.restart(Duration::from_millis(700));
    store.finish_job(&job, "failed", &serde_json::json!({"error": "the server went away"})).unwrap();

    let mut check = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let row = check.query_one(&format!("SELECT state FROM {schema}.jobs WHERE id = $1"), &[&job]).unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!(store.get_job(&job).unwrap().unwrap().state, "failed");
}
