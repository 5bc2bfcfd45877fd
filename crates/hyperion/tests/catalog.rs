//! One catalog: for every preset, the planner's model (by the same name) has exactly
//! the parameters the engine allocates, and the config resolves to the same spec.

#[test]
fn planner_parameter_counts_equal_what_the_engine_allocates() {
    for name in config::presets::names() {
        let plan = planner::models::model(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut raw = config::presets::get(name).unwrap();
        raw.log.peak_flops = Some(1e11);
        let mut cfg = config::ResolvedConfig::new(raw).unwrap().with_vocab_size(plan.vocab).unwrap();
        cfg.preset = Some(name.to_string());
        let spec = cfg.model_spec().unwrap();
        assert_eq!(model::ModelSpec { source: plan.source.clone(), ..spec.clone() }, plan, "{name}: config and planner specs differ");
        let layout = model::Layout::new(&spec);
        assert_eq!(layout.num_params() as f64, plan.params(), "{name}");
        if spec.num_params() < 50_000_000 {
            // Build the engine for real and count the elements of its parameter buckets.
            cfg.raw.train.batch_size = 1;
            let t = engine::Trainer::synthetic(cfg, engine::Rank::single().unwrap()).unwrap();
            let allocated: usize = t.shards.iter().map(|s| s.numel).sum();
            let held: usize = t.params.iter().map(|p| p.len()).sum();
            assert_eq!(allocated as f64, plan.params(), "{name}");
            assert_eq!(held, allocated, "{name}: dp = 1 holds every bucket unpadded");
        }
    }
}
