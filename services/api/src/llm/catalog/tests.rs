//! The catalog's parsing and validation rules.

use super::*;

const SAMPLE: &str = r#"
    [[models]]
    name = "gpt-4o-mini"
    upstream = "http://litellm:4000/v1/"
    upstream_model = "openai/gpt-4o-mini"
    api_key_env = "TEST_KEY"
    input_usd_per_mtok = 0.15
    output_usd_per_mtok = 0.60
"#;

#[test]
fn parses_and_prices_exactly() {
    let c = Catalog::parse(SAMPLE, |_| Some("k".into())).unwrap();
    let m = c.get("gpt-4o-mini").unwrap();
    assert_eq!(m.target, Target::Url("http://litellm:4000/v1".into()));
    assert_eq!(endpoint_url("http://litellm:4000/v1", "/chat/completions"), "http://litellm:4000/v1/chat/completions");
    assert_eq!(m.upstream_model, "openai/gpt-4o-mini");
    assert_eq!(m.api_key.as_ref().unwrap().expose(), "k");
    // 1,000 input and 500 output tokens: 0.00015 + 0.0003
    assert_eq!(m.cost(1000, 500), "0.00045".parse::<Decimal>().unwrap());
    assert_eq!(m.cost(1, 0), "0.00000015".parse::<Decimal>().unwrap());
    assert!(c.get("unknown").is_none());
}

#[test]
fn rejects_bad_catalogs() {
    assert!(Catalog::parse(SAMPLE, |_| None).is_err(), "missing key variable");
    assert!(Catalog::parse(&SAMPLE.replace("http://", "ftp://"), |_| Some("k".into())).is_err());
    assert!(Catalog::parse(&format!("{SAMPLE}{SAMPLE}"), |_| Some("k".into())).is_err(), "duplicate");
    assert!(Catalog::parse(&SAMPLE.replace("0.15", "-1.0"), |_| Some("k".into())).is_err());
    assert!(Catalog::parse("[[models]]\nname = \"x\"\nbogus = 1\n", |_| None).is_err());
    let unpriced = SAMPLE.replace("output_usd_per_mtok = 0.60", "");
    let err = Catalog::parse(&unpriced, |_| Some("k".into())).unwrap_err();
    assert!(format!("{err:#}").contains("output_usd_per_mtok"), "a model with no price does not load: {err:#}");
    assert!(Catalog::parse(&format!("{SAMPLE}max_output_tokens = 0\n"), |_| Some("k".into())).is_err());
    let capped = Catalog::parse(&format!("{SAMPLE}max_output_tokens = 512\n"), |_| Some("k".into())).unwrap();
    assert_eq!(capped.get("gpt-4o-mini").unwrap().max_output_tokens, 512);
    let default = Catalog::parse(SAMPLE, |_| Some("k".into())).unwrap();
    assert_eq!(default.get("gpt-4o-mini").unwrap().max_output_tokens, DEFAULT_MAX_OUTPUT_TOKENS);
    let both = SAMPLE.replace("upstream_model", "gpu_pool = \"a\"\nupstream_model");
    assert!(Catalog::parse(&both, |_| Some("k".into())).is_err(), "upstream and gpu_pool");
    let limited =
        Catalog::parse(&format!("{SAMPLE}[models.limits]\nrequests_per_minute = 60\nmax_concurrent = 2\n"), |_| {
            Some("k".into())
        })
        .unwrap();
    let limits = limited.get("gpt-4o-mini").unwrap().limits;
    assert_eq!(
        (limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent),
        (Some(60), None, Some(2))
    );
    assert!(Catalog::parse(&format!("{SAMPLE}[models.limits]\nmax_concurrent = 0\n"), |_| Some("k".into())).is_err());
    assert!(Catalog::parse(&format!("{SAMPLE}[models.limits]\nrpm = 1\n"), |_| Some("k".into())).is_err());
    let pool = SAMPLE.replace("upstream = \"http://litellm:4000/v1/\"", "gpu_pool = \"a100\"");
    let c = Catalog::parse(&pool, |_| Some("k".into())).unwrap();
    assert_eq!(c.get("gpt-4o-mini").unwrap().target, Target::Pool("a100".into()));
}

#[test]
fn endpoints_api_styles_and_cache_prices() {
    let key = |_: &str| Some("k".to_owned());
    let c = Catalog::parse(SAMPLE, key).unwrap();
    let m = c.get("gpt-4o-mini").unwrap();
    assert_eq!(m.endpoints, [CatalogEndpoint::ChatCompletions], "the default");
    assert_eq!(m.api, ApiStyle::OpenAi);
    let many = format!("{SAMPLE}endpoints = [\"chat_completions\", \"responses\", \"completions\"]\n");
    assert_eq!(Catalog::parse(&many, key).unwrap().get("gpt-4o-mini").unwrap().endpoints.len(), 3);
    for bad in ["[\"chat\"]", "[]", "[\"embeddings\", \"embeddings\"]", "[\"messages\"]"] {
        assert!(Catalog::parse(&format!("{SAMPLE}endpoints = {bad}\n"), key).is_err(), "{bad}");
    }
    let embed = "[[models]]\nname = \"e\"\nupstream = \"http://u/v1\"\ninput_usd_per_mtok = 0.02\nendpoints = [\"embeddings\"]\n";
    let e = Catalog::parse(embed, key).unwrap();
    assert_eq!(e.get("e").unwrap().cost(1_000_000, 0), "0.02".parse::<Decimal>().unwrap(), "input price only");
    let claude = "[[models]]\nname = \"c\"\nupstream = \"http://u/v1\"\napi = \"anthropic\"\ninput_usd_per_mtok = 3\noutput_usd_per_mtok = 15\ncache_read_usd_per_mtok = 0.3\ncache_creation_usd_per_mtok = 3.75\n";
    let c = Catalog::parse(claude, key).unwrap();
    let m = c.get("c").unwrap();
    assert_eq!(m.endpoints, [CatalogEndpoint::Messages]);
    let usage = Usage { input: 10, output: 20, cache_read: 1000, cache_creation: 100 };
    // 10×3 + 20×15 + 1000×0.3 + 100×3.75 = 30 + 300 + 300 + 375 = 1005 µ$
    assert_eq!(m.usage_cost(&usage), "0.001005".parse::<Decimal>().unwrap());
    assert_eq!(usage.all_input(), 1110);
    assert!(Catalog::parse(&claude.replace("cache_read_usd_per_mtok = 0.3\n", ""), key).is_err());
    assert!(Catalog::parse(&format!("{claude}endpoints = [\"chat_completions\"]\n"), key).is_err());
    assert!(Catalog::parse(&claude.replace("anthropic", "gemini"), key).is_err());
}
