//! `bench-ceiling --addr 127.0.0.1:PORT`: the ceiling server of the
//! benchmark (see `msgbus_bench::ceiling`). Runs until killed.

use std::net::SocketAddr;

use clap::Parser;

/// The benchmark's ceiling server.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let (addr, server) = msgbus_bench::ceiling::bind(args.addr).await?;
    println!("bench-ceiling listening on {addr}");
    server.await
}
