//! placeholder
use super::Ctx;
use std::sync::Arc;
pub async fn run(_ctx: &Arc<Ctx>) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
