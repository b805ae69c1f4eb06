//! TCP workloads through the gateway: a server for the backend namespace
//! and three clients, each bounded in time and printing one JSON line.
//!
//! Protocol: the client's first byte picks the mode.
//! - `r` (request/response): the server echoes fixed-size messages until
//!   EOF. `tcp-rr` keeps one connection and times every transaction;
//!   `tcp-crr` opens a connection per transaction (connect, one exchange,
//!   close), like netperf's TCP_CRR.
//! - `s` (stream): the server reads until EOF, then answers with the byte
//!   count (u64, big endian). `tcp-stream` divides that by the time until
//!   the answer arrived, so bytes still in flight are never counted.
//!
//! Latencies are recorded in nanoseconds in an HdrHistogram (3 significant
//! digits) and reported in microseconds.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::util::pin_to_cpu;

/// Bytes per request and per response.
const MSG: usize = 32;
const STREAM_CHUNK: usize = 128 * 1024;
/// Longest a connect or a single read may take before it counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Connections served at once (one thread each).
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Exit after this many seconds whatever happens (a bound for a
    /// server left behind).
    #[arg(long, default_value_t = 3600)]
    lifetime: u64,
    /// Core to pin the server's threads to.
    #[arg(long)]
    cpu: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Address to connect to (a VIP:port, or a backend for forwarding).
    #[arg(long)]
    to: SocketAddr,
    /// Seconds measured.
    #[arg(long)]
    duration: f64,
    /// Seconds run before measuring (not counted).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Concurrent connection loops (tcp-crr only).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Core to pin the client's threads to.
    #[arg(long)]
    cpu: Option<usize>,
}

/// One client run's results; absent fields do not apply to the workload.
#[derive(Debug, Default, Serialize)]
pub struct ClientReport {
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactions_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbit_per_s: Option<f64>,
    pub count: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds are valid")
}

fn percentiles(h: &Histogram<u64>) -> Option<Percentiles> {
    if h.is_empty() {
        return None;
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    Some(Percentiles {
        p50: us(h.value_at_quantile(0.50)),
        p90: us(h.value_at_quantile(0.90)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
    })
}

pub fn serve(args: &ServerArgs) -> anyhow::Result<()> {
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    let lifetime = Duration::from_secs(args.lifetime);
    thread::spawn(move || {
        thread::sleep(lifetime);
        eprintln!("tcp-server: lifetime of {lifetime:?} over, exiting");
        std::process::exit(0);
    });
    let mut workers = Vec::new();
    for _ in 0..args.threads.max(1) {
        let listener = listener.try_clone()?;
        let cpu = args.cpu;
        workers.push(thread::spawn(move || {
            if let Some(cpu) = cpu {
                let _ = pin_to_cpu(cpu);
            }
            loop {
                match listener.accept() {
                    // A client that misbehaves only ends its connection.
                    Ok((conn, _)) => drop(serve_one(conn)),
                    Err(e) => {
                        eprintln!("tcp-server: accept: {e}");
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }));
    }
    eprintln!("tcp-server: listening on {}", args.listen);
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn serve_one(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut mode = [0u8; 1];
    conn.read_exact(&mut mode)?;
    match mode[0] {
        b'r' => {
            let mut msg = [0u8; MSG];
            loop {
                match conn.read_exact(&mut msg) {
                    Ok(()) => conn.write_all(&msg)?,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        b's' => {
            let mut buf = vec![0u8; STREAM_CHUNK];
            let mut total: u64 = 0;
            loop {
                match conn.read(&mut buf)? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            conn.write_all(&total.to_be_bytes())
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown mode byte {other:#x}"),
        )),
    }
}

fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// One connection, back-to-back transactions, each timed.
pub fn rr(args: &ClientArgs) -> anyhow::Result<ClientReport> {
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let mut conn = connect(args.to).with_context(|| format!("connect {}", args.to))?;
    conn.write_all(b"r")?;
    let mut hist = histogram();
    let (req, mut resp) = ([7u8; MSG], [0u8; MSG]);
    let warm_until = Instant::now() + Duration::from_secs_f64(args.warmup);
    while Instant::now() < warm_until {
        conn.write_all(&req)?;
        conn.read_exact(&mut resp)?;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let mut count = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        conn.write_all(&req)?;
        conn.read_exact(&mut resp)
            .context("waiting for a response")?;
        hist.saturating_record(t0.elapsed().as_nanos() as u64);
        count += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(ClientReport {
        seconds,
        transactions_per_s: Some(count as f64 / seconds),
        count,
        latency_us: percentiles(&hist),
        ..ClientReport::default()
    })
}

/// `parallel` loops of connect, one transaction, close.
pub fn crr(args: &ClientArgs) -> anyhow::Result<ClientReport> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..args.parallel.max(1) {
        let (measuring, stop, to, cpu) = (measuring.clone(), stop.clone(), args.to, args.cpu);
        loops.push(thread::spawn(move || {
            if let Some(cpu) = cpu {
                let _ = pin_to_cpu(cpu);
            }
            let mut hist = histogram();
            let (mut count, mut errors) = (0u64, 0u64);
            let mut req = [7u8; MSG + 1];
            req[0] = b'r';
            let mut resp = [0u8; MSG];
            // Relaxed: flags only; the results travel through join().
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let ok = connect(to)
                    .and_then(|mut c| {
                        c.write_all(&req)?;
                        c.read_exact(&mut resp)
                    })
                    .is_ok();
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        hist.saturating_record(t0.elapsed().as_nanos() as u64);
                        count += 1;
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, count, errors)
        }));
    }
    thread::sleep(Duration::from_secs_f64(args.warmup));
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    thread::sleep(Duration::from_secs_f64(args.duration));
    measuring.store(false, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut hist = histogram();
    let (mut count, mut errors) = (0, 0);
    for l in loops {
        let (h, c, e) = l
            .join()
            .map_err(|_| anyhow::anyhow!("a crr loop panicked"))?;
        hist.add(&h).context("merging histograms")?;
        count += c;
        errors += e;
    }
    Ok(ClientReport {
        seconds,
        connections_per_s: Some(count as f64 / seconds),
        count,
        errors,
        latency_us: percentiles(&hist),
        ..ClientReport::default()
    })
}

/// One connection, bulk data one way; throughput as the server counted it.
pub fn stream(args: &ClientArgs) -> anyhow::Result<ClientReport> {
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let mut conn = connect(args.to).with_context(|| format!("connect {}", args.to))?;
    conn.write_all(b"s")?;
    let chunk = vec![0x5au8; STREAM_CHUNK];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    while Instant::now() < end {
        conn.write_all(&chunk).context("sending")?;
    }
    conn.shutdown(Shutdown::Write)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut count = [0u8; 8];
    conn.read_exact(&mut count)
        .context("waiting for the server's byte count")?;
    let bytes = u64::from_be_bytes(count);
    let seconds = start.elapsed().as_secs_f64();
    Ok(ClientReport {
        seconds,
        gbit_per_s: Some(bytes as f64 * 8.0 / seconds / 1e9),
        count: bytes,
        ..ClientReport::default()
    })
}
