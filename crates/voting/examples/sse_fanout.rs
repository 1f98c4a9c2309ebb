//! Benchmark tool: opens many Server-Sent Events clients on one result service and measures
//! how late each client gets each update compared with the first client that got it.
//!
//! `sse_fanout <host:port> <clients> <seconds>` prints one JSON object. Clients are plain
//! TCP connections reading `/events`, so the tool itself stays light at 10,000 clients.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let clients: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let seconds: u64 = args.next().map_or(Ok(20), |s| s.parse())?;
    let until = Instant::now() + Duration::from_secs(seconds);

    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move { client(&addr, until).await.unwrap_or_default() }));
        // Connect at a steady pace rather than as one burst the listener's backlog drops.
        tokio::task::yield_now().await;
    }
    let mut received: Vec<Vec<(u64, Instant)>> = Vec::with_capacity(clients);
    for task in tasks {
        received.push(task.await?);
    }

    // The first arrival of each total across all clients is the reference for the others.
    let mut first: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    for (total, at) in received.iter().flatten() {
        first.entry(*total).and_modify(|f| *f = (*f).min(*at)).or_insert(*at);
    }
    let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for (total, at) in received.iter().flatten() {
        lag.record(at.duration_since(first[total]).as_micros().max(1) as u64)?;
    }
    let connected = received.iter().filter(|r| !r.is_empty()).count();
    let final_total = first.keys().max().copied().unwrap_or(0);
    let saw_final = received.iter().filter(|r| r.last().is_some_and(|(t, _)| *t == final_total)).count();
    let ms = |q: f64| lag.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "clients": clients,
            "connected": connected,
            "updates": first.len(),
            "clients_with_final_total": saw_final,
            "final_total": final_total,
            "lag_ms": { "p50": ms(0.5), "p99": ms(0.99), "max": lag.max() as f64 / 1000.0 },
        })
    );
    Ok(())
}

/// One client: the totals it saw, and when.
async fn client(addr: &str, until: Instant) -> anyhow::Result<Vec<(u64, Instant)>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n").await?;
    let mut seen = Vec::new();
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let read = match tokio::time::timeout_at(until.into(), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => return Ok(seen),
            Ok(read) => read?,
        };
        let now = Instant::now();
        buffer.extend_from_slice(&chunk[..read]);
        // Each message carries `"total":N`; keep an unfinished tail for the next read.
        while let Some(start) = find(&buffer, b"\"total\":") {
            let digits_from = start + 8;
            let Some(len) = buffer[digits_from..].iter().position(|b| !b.is_ascii_digit()) else { break };
            let total = std::str::from_utf8(&buffer[digits_from..digits_from + len])?.parse()?;
            seen.push((total, now));
            buffer.drain(..digits_from + len);
        }
        if buffer.len() > 64 * 1024 {
            buffer.clear();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
