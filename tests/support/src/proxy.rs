//! A TCP proxy that takes a server off the network in the middle of a test.

/// A TCP proxy in front of a real server, to take that server "off the network" mid-test:
/// `cut` refuses and drops connections (an outage the client notices at once), `freeze`
/// keeps every connection open and silent (a dead link the client can only time out on).
pub struct TcpProxy {
    pub port: u16,
    cut: std::sync::Arc<tokio::sync::Notify>,
    frozen: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let cut_signal = cut.clone();
        let (frozen, frozen_signal) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = cut_signal.notified() => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { break };
                        let mut frozen = frozen_signal.clone();
                        connections.spawn(async move {
                            let frozen_now = *frozen.borrow();
                            if frozen_now {
                                // Accepted, and never a byte either way.
                                std::future::pending::<()>().await;
                            }
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = async { frozen.wait_for(|f| *f).await.map(|_| ()) } => {
                                    // Both sockets stay open, and silent.
                                    std::future::pending::<()>().await;
                                }
                            }
                        });
                    }
                }
            }
            // Dropping the listener and every connection: the server is gone.
            connections.abort_all();
        });
        Self {
            port,
            cut,
            frozen,
            task,
        }
    }

    /// A proxy in front of the PostgreSQL server of `database_url`, and that URL with the
    /// proxy in its place.
    pub async fn for_database(database_url: &str) -> (Self, String) {
        let mut url = url::Url::parse(database_url).unwrap();
        let target = (
            url.host_str().unwrap().to_owned(),
            url.port().unwrap_or(5432),
        );
        let target = tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .unwrap();
        let proxy = Self::start(target).await;
        url.set_port(Some(proxy.port)).unwrap();
        (proxy, url.to_string())
    }

    /// A proxy in front of the S3 server at `endpoint`, and the endpoint through it.
    pub async fn for_s3(endpoint: &str) -> (Self, String) {
        let endpoint = url::Url::parse(endpoint).unwrap();
        let target = tokio::net::lookup_host((
            endpoint.host_str().unwrap().to_owned(),
            endpoint.port_or_known_default().unwrap(),
        ))
        .await
        .unwrap()
        .next()
        .unwrap();
        let proxy = Self::start(target).await;
        let proxied = format!("http://127.0.0.1:{}", proxy.port);
        (proxy, proxied)
    }

    /// Refuses new connections and drops the open ones.
    pub async fn cut(self) {
        self.cut.notify_one();
        let _ = self.task.await;
    }

    /// Stops forwarding without closing anything: a link that died silently.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}
