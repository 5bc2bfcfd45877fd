//! Placeholder: being written.

#[derive(clap::Args)]
pub struct BenchCommArgs {}

pub fn run(_args: BenchCommArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
