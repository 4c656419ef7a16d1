//! The whole system as operators run it: the `media-node` binary and its subcommands, the
//! pod as the manifests describe it, replicas behind a real load balancer, the graceful
//! drain, a real Prometheus scraping it, and the deployment files themselves.

mod cli;
mod deploy;
mod drain;
mod load_balancer;
mod pod;
mod prometheus;
