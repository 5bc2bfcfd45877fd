//! Placeholder: being written.

#[derive(clap::Args)]
pub struct PlotArgs {}

pub fn run(_args: PlotArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
