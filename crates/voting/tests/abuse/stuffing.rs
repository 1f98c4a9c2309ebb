//! Ballot stuffing: every request without a cookie is a new voter, so new voters per client
//! address are limited, and a client cannot pick the address it is limited as.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use voting::http::client::Cidrs;
use voting::http::connection::ConnectionLimits;
use voting::vote::limit::NewVoterPolicy;

use crate::{InProcess, connect_from};

/// What one vote request got.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    content_type: String,
    body: String,
    cookie: Option<String>,
}

/// A vote sent from the loopback address `from` over its own connection, with extra headers.
async fn vote_from(from: IpAddr, to: SocketAddr, form: bool, headers: &[(&str, &str)]) -> Answer {
    let (path, content_type, body) = if form {
        ("/", "application/x-www-form-urlencoded", "vote=a".to_owned())
    } else {
        ("/api/vote", "application/json", r#"{"vote":"a"}"#.to_owned())
    };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let mut stream = connect_from(from, to).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
        })
    };
    Answer {
        status: head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0),
        retry_after: header("retry-after").and_then(|v| v.parse().ok()),
        content_type: header("content-type").unwrap_or_default(),
        body: body.to_owned(),
        cookie: header("set-cookie").map(|c| c.split(';').next().unwrap().to_owned()),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// 127.0.0.1 is the only trusted proxy, and nothing is exempt, so 127.0.0.x are clients. A
/// burst of 20 and one more every 10 s: a slow test machine cannot earn a client an extra
/// voter during a test.
async fn limited_system() -> InProcess {
    InProcess::start(|config| {
        config.system.vote.new_voters = NewVoterPolicy { rate: 0.1, burst: 20, exempt: Cidrs::default() };
        config.set_connections(ConnectionLimits::new(None, 256, "127.0.0.1/32".parse().unwrap()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_voters_from_one_address_are_limited_and_its_voters_may_still_change_their_minds() {
    let system = limited_system().await;
    let client = ip("127.0.0.2");
    let mut cookies = Vec::new();
    for n in 0..20 {
        let answer = vote_from(client, system.vote, n % 2 == 0, &[]).await;
        assert!(matches!(answer.status, 200 | 202), "new voter {n}: {answer:?}");
        cookies.push(answer.cookie.expect("a new voter gets a cookie"));
    }
    let form = vote_from(client, system.vote, true, &[]).await;
    assert_eq!(form.status, 429, "{form:?}");
    assert!(form.retry_after.is_some_and(|s| s >= 1), "{form:?}");
    assert!(
        form.content_type.starts_with("text/html") && form.body.contains("too many new voters"),
        "{form:?}"
    );
    assert!(form.cookie.is_none(), "a refused new voter gets no cookie");
    let api = vote_from(client, system.vote, false, &[]).await;
    assert_eq!(api.status, 429);
    assert!(
        api.content_type.starts_with("application/json") && api.body.contains("too many new voters"),
        "{api:?}"
    );

    // Re-votes by existing voters are not new voters.
    for cookie in cookies.iter().cycle().take(60) {
        let answer = vote_from(client, system.vote, false, &[("Cookie", cookie)]).await;
        assert_eq!(answer.status, 202, "a re-vote: {answer:?}");
    }
    // Another address has its own allowance.
    assert_eq!(vote_from(ip("127.0.0.3"), system.vote, false, &[]).await.status, 202);
    system.wait_for_total(21).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited_and_an_untrusted_one_cannot_forge_it() {
    let system = limited_system().await;
    let proxy = ip("127.0.0.1");
    let accepted = async |from: IpAddr, forwarded: &str| {
        vote_from(from, system.vote, false, &[("X-Forwarded-For", forwarded)]).await.status == 202
    };
    // A client behind the proxy: limited as itself.
    let mut counted = 0;
    for _ in 0..25 {
        counted += u64::from(accepted(proxy, "203.0.113.9").await);
    }
    assert_eq!(counted, 20);
    // A forged first hop is never reached: the proxy's own hop names the client.
    assert!(!accepted(proxy, "198.51.100.1, 203.0.113.9").await);
    assert!(accepted(proxy, "203.0.113.10").await, "another client has its own allowance");

    // IPv6: one /64 is one client, whatever host addresses it sprays.
    let mut sprayed = 0;
    for host in 1..=25 {
        sprayed += u64::from(accepted(proxy, &format!("2001:db8:1:2::{host:x}")).await);
    }
    assert_eq!(sprayed, 20);
    assert!(accepted(proxy, "2001:db8:1:3::1").await, "the next /64 is another client");

    // An untrusted peer's X-Forwarded-For is ignored: rotating it changes nothing.
    let mut forged = 0;
    for n in 0..25 {
        forged += u64::from(accepted(ip("127.0.0.5"), &format!("192.0.2.{n}")).await);
    }
    assert_eq!(forged, 20);
    system.wait_for_total(counted + 1 + sprayed + 1 + forged).await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_defaults_limit_a_client_relayed_over_loopback_but_not_loopback_itself() {
    // Defaults: loopback is trusted and exempt. The original app's `ab` load from the same
    // machine is not limited, while a remote client relayed by a proxy on loopback is.
    let system = InProcess::start(|_| {}).await;
    let local = ip("127.0.0.1");
    for n in 0..100 {
        assert_eq!(vote_from(local, system.vote, true, &[]).await.status, 200, "local new voter {n}");
    }
    let relayed: Vec<u16> = futures_util::future::join_all(
        (0..25).map(|_| vote_from(local, system.vote, true, &[("X-Forwarded-For", "203.0.113.7")])),
    )
    .await
    .into_iter()
    .map(|answer| answer.status)
    .collect();
    // The burst, and at most one more earned at 5 a second while the requests ran.
    let counted = relayed.iter().filter(|s| **s == 200).count();
    assert!(matches!(counted, 20 | 21), "{relayed:?}");
    assert_eq!(relayed.iter().filter(|s| **s == 429).count(), 25 - counted, "{relayed:?}");
    system.wait_for_total(100 + counted as u64).await;
    system.stop().await;
}
