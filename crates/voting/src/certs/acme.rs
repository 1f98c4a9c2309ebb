//! One certificate from the ACME server, by HTTP-01, resumable at every step: the order is
//! recorded before any challenge is answered and the certificate's key before the order is
//! finalized, so a leader that dies anywhere leaves the next one the same order to finish.
//! Exactly one order per issuance, however often leaders change (Let's Encrypt limits
//! duplicate certificates to five a week).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy,
};

use super::store::{Issued, Leader};

/// Where and as whom certificates are ordered.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub directory_url: String,
    /// The account's contact, told of expiry problems by Let's Encrypt.
    pub contact_email: Option<String>,
    /// A root to trust for the ACME server's own HTTPS (a test CA such as Pebble's), instead of
    /// the system's roots.
    pub ca_root: Option<std::path::PathBuf>,
    /// How long an order may take to be validated and issued before this leader gives it up
    /// (the next check resumes it).
    pub order_timeout: Duration,
    /// Where the leader fetches each challenge answer itself before handing the challenge in,
    /// as the CA will: `http://<domain>` when `None`. An edge proxy that has not loaded the
    /// challenge route yet (the first seconds of a new stack) would fail the validation, and
    /// failed validations count against Let's Encrypt's limits.
    pub self_check_url: Option<String>,
    /// How long the self-check may fail before the challenge is handed in anyway (the leader's
    /// network may not reach its own public address: no hairpin routing).
    pub self_check_timeout: Duration,
}

/// The account this leader orders with: the stored one, or a new one stored before use.
pub async fn account(leader: &mut Leader, settings: &AcmeSettings) -> anyhow::Result<Account> {
    let builder = match &settings.ca_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    }
    .context("the ACME client")?;
    if let Some(credentials) = leader.account(&settings.directory_url).await? {
        return builder.from_credentials(credentials).await.context("restoring the ACME account");
    }
    let contact = settings.contact_email.iter().map(|email| format!("mailto:{email}")).collect::<Vec<_>>();
    let contact = contact.iter().map(String::as_str).collect::<Vec<_>>();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder
        .create(&new, settings.directory_url.clone(), None)
        .await
        .with_context(|| format!("creating an ACME account at {}", settings.directory_url))?;
    leader.save_account(&settings.directory_url, &credentials).await?;
    tracing::info!(directory = %settings.directory_url, "ACME account created");
    Ok(account)
}

/// Obtains a certificate for `domains` under `name` and stores it, resuming the recorded order
/// if there is one.
pub async fn obtain(
    leader: &mut Leader,
    account: &Account,
    settings: &AcmeSettings,
    name: &str,
    domains: &[String],
) -> anyhow::Result<()> {
    let (mut order, mut key_pem) = match leader.order(name).await? {
        Some(record) => match account.order(record.url.clone()).await.map(|mut order| {
            let status = order.state().status;
            (order, status)
        }) {
            Ok((order, status)) if status != OrderStatus::Invalid => {
                tracing::info!(name, order = %record.url, ?status, "resuming the recorded order");
                (order, record.key_pem)
            }
            // The CA no longer has it (expired, invalid): no certificate can come of it.
            Ok(_) | Err(instant_acme::Error::Api(_)) => {
                tracing::warn!(name, order = %record.url, "the recorded order is over; placing a new one");
                leader.forget_order(name).await?;
                (place(leader, account, name, domains).await?, None)
            }
            Err(e) => return Err(e).context("reading the recorded order"),
        },
        None => (place(leader, account, name, domains).await?, None),
    };
    let url = order.url().to_owned();
    // A CA takes seconds to validate and to issue: asking after 2 s, then less and less often,
    // spares it needless polls.
    let polling =
        RetryPolicy::new().initial_delay(Duration::from_secs(2)).backoff(1.5).timeout(settings.order_timeout);

    if order.state().status == OrderStatus::Pending {
        answer_challenges(leader, &mut order, &url, settings).await?;
        if order.poll_ready(&polling).await? == OrderStatus::Invalid {
            leader.forget_order(name).await?;
            bail!("the CA refused the order {url}: {:?}", order.state().error);
        }
    }
    if order.state().status == OrderStatus::Ready {
        let key_pem = match &key_pem {
            Some(key_pem) => key_pem.clone(),
            None => {
                let key = rcgen::KeyPair::generate()?.serialize_pem();
                leader.record_order_key(name, &key).await?;
                key_pem = Some(key.clone());
                key
            }
        };
        let key = rcgen::KeyPair::from_pem(&key_pem)?;
        let mut params = rcgen::CertificateParams::new(domains.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        order.finalize_csr(params.serialize_request(&key)?.der()).await.context("finalizing the order")?;
    }
    let Some(key_pem) = key_pem else {
        // Finalized without a recorded key cannot happen (the key is recorded first); if the
        // database lost it, the certificate is useless: start over.
        leader.forget_order(name).await?;
        bail!("the order {url} was finalized but its key is not recorded");
    };
    let certificate_pem = order.poll_certificate(&polling).await.context("waiting for the certificate")?;
    let not_after_unix = not_after(&certificate_pem)?;
    leader
        .store_certificate(name, domains, &Issued { certificate_pem, key_pem, not_after_unix }, &url)
        .await?;
    tracing::info!(name, order = %url, not_after_unix, "certificate stored");
    Ok(())
}

/// Places a new order and records it before anything else happens to it.
async fn place(
    leader: &mut Leader,
    account: &Account,
    name: &str,
    domains: &[String],
) -> anyhow::Result<Order> {
    let identifiers = domains.iter().map(|domain| Identifier::Dns(domain.clone())).collect::<Vec<_>>();
    let order = account.new_order(&NewOrder::new(&identifiers)).await.context("placing an order")?;
    leader.record_order(name, domains, order.url()).await.context("recording the new order")?;
    tracing::info!(name, order = %order.url(), "order placed");
    Ok(order)
}

/// Publishes every pending authorization's HTTP-01 answer, then tells the CA to check it.
async fn answer_challenges(
    leader: &mut Leader,
    order: &mut Order,
    url: &str,
    settings: &AcmeSettings,
) -> anyhow::Result<()> {
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            status => bail!("authorization {} is {status:?}", authorization.url()),
        }
        let mut challenge =
            authorization.challenge(ChallengeType::Http01).context("the CA offers no HTTP-01 challenge")?;
        let key_authorization = challenge.key_authorization();
        leader.publish_challenge(&challenge.token, key_authorization.as_str(), url).await?;
        let domain = challenge.identifier().to_string();
        self_check(settings, &domain, &challenge.token, key_authorization.as_str()).await;
        // A challenge the last leader already handed in is being checked: asking again is an
        // error at some CAs.
        if challenge.status == ChallengeStatus::Pending {
            challenge.set_ready().await.context("handing in the challenge")?;
        }
    }
    Ok(())
}

/// Waits until `http://<domain>/.well-known/acme-challenge/<token>` (or the same path at the
/// configured self-check URL, asked for `domain`) answers `expected`, at most the self-check
/// timeout.
async fn self_check(settings: &AcmeSettings, domain: &str, token: &str, expected: &str) {
    let base = settings.self_check_url.clone().unwrap_or_else(|| format!("http://{domain}"));
    let url = format!("{}/.well-known/acme-challenge/{token}", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a plain HTTP client");
    let deadline = tokio::time::Instant::now() + settings.self_check_timeout;
    loop {
        let answer = client.get(&url).header(reqwest::header::HOST, domain).send().await;
        let answered = match answer {
            Ok(response) if response.status().is_success() => {
                response.text().await.is_ok_and(|body| body == expected)
            }
            _ => false,
        };
        if answered {
            tracing::debug!(domain, "the challenge answer is reachable");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(domain, %url, "the challenge answer is not reachable from here; handing it in anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether `error` says the CA does not know the account it was made with.
pub fn account_is_gone(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| match cause.downcast_ref::<instant_acme::Error>() {
        Some(instant_acme::Error::Api(problem)) => {
            problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
        }
        _ => false,
    })
}

/// When the first certificate of a PEM chain expires, in seconds since the epoch.
fn not_after(chain_pem: &str) -> anyhow::Result<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes()).context("the CA sent no PEM")?;
    let certificate = pem.parse_x509().context("the CA sent an unreadable certificate")?;
    Ok(certificate.validity().not_after.timestamp())
}

/// A trust root given as a file: read once at start so a wrong path fails the start, not the
/// first order days later.
pub fn check_root(path: &Path) -> anyhow::Result<()> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    x509_parser::pem::parse_x509_pem(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_the_ca_does_not_know_is_told_from_other_refusals() {
        let refusal = |kind: &str| {
            let problem: instant_acme::Problem =
                serde_json::from_value(serde_json::json!({ "type": kind, "detail": "no", "status": 400 }))
                    .unwrap();
            anyhow::Error::from(instant_acme::Error::Api(problem)).context("placing an order")
        };
        assert!(account_is_gone(&refusal("urn:ietf:params:acme:error:accountDoesNotExist")));
        assert!(!account_is_gone(&refusal("urn:ietf:params:acme:error:unauthorized")));
        assert!(!account_is_gone(&anyhow::anyhow!("connection refused")));
    }

    #[test]
    fn the_expiry_is_read_from_the_leaf_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["vote.example".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let pem = params.self_signed(&key).unwrap().pem();
        assert_eq!(not_after(&pem).unwrap(), 1_935_792_000);
        assert!(not_after("no certificate here").is_err());
    }
}
