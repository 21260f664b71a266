//! Tokenizer (token-exact with open_clip's SimpleTokenizer), text tower (≤ 1e-5 vs
//! PyTorch in every checkpoint format), prompt engine, and the text CLI commands.
use crate::common;

use std::io::Read;

use common::*;
use famix::clip::tokenizer::{Tokenizer, EOT, SOT};
use famix::clip::{Clip, OutputStride};
use famix::style::prompts::{PromptEmbedder, PromptSet};
use tch::{Device, Tensor};

const TOL: f64 = 1e-5;

#[test]
fn every_famix_prompt_tokenizes_exactly() {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixture("tokens_famix.u16.gz")).unwrap()).read_to_end(&mut raw).unwrap();
    let ids: Vec<u32> = raw.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect();
    let p = PromptSet::default();
    let mut corpus = Vec::new();
    for tpl in &p.templates {
        for style in &p.random_styles {
            for c in &p.class_names {
                corpus.push(tpl.replacen("{}", &format!("{style} {c}"), 1));
            }
        }
        corpus.push(tpl.replacen("{}", &p.ignore_class_prompt, 1));
    }
    assert_eq!(corpus.len(), 80 * (20 * 19 + 1));
    let tok = Tokenizer::global();
    let mut pos = 0;
    for text in &corpus {
        let n = ids[pos] as usize;
        let want = &ids[pos + 1..pos + 1 + n];
        pos += 1 + n;
        let got = tok.tokenize(text, 77, false).unwrap();
        assert_eq!(got, want, "token ids differ for {text:?}");
    }
    assert_eq!(pos, ids.len(), "corpus and fixture lengths differ");
}

#[test]
fn special_texts_tokenize_exactly() {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("tokens_misc.json")).unwrap()).unwrap();
    let tok = Tokenizer::global();
    for item in v["misc"].as_array().unwrap() {
        let text = item["text"].as_str().unwrap();
        let want: Vec<u32> = item["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got = tok.tokenize(text, usize::MAX, false).unwrap();
        assert_eq!(got, want, "token ids differ for {text:?}");
    }
}

#[test]
fn long_text_errors_or_truncates_keeping_eot() {
    let tok = Tokenizer::global();
    let long = "the quick brown fox ".repeat(30);
    let err = tok.tokenize(&long, 77, false).unwrap_err();
    assert!(format!("{err}").contains("context"), "{err}");
    let ids = tok.tokenize(&long, 77, true).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!((ids[0], ids[76]), (SOT, EOT));
    assert_eq!(tok.tokenize("", 77, false).unwrap(), vec![SOT, EOT]);
    assert_eq!(tok.decode(&tok.encode("Hello, World!")).trim(), "hello , world !");
}

fn texts() -> Vec<String> {
    ["a photo of a cat", "Ethereal Mist style road", "photo", ""].iter().map(|s| s.to_string()).collect()
}

#[test]
fn text_tower_matches_pytorch_in_every_format() {
    let exp = load("expected_clip.safetensors");
    let tokens = Tokenizer::global().batch(&texts(), 77, false).unwrap();
    assert_eq!(max_abs_diff(&tokens, &exp["clip_a.text_tokens"]), 0.0, "token rows differ");
    for (file, key) in [
        ("clip_a_script.pt.gz", "clip_a"),
        ("clip_a_script_fp16.pt.gz", "clip_a_fp16"),
        ("clip_a_state.pt.gz", "clip_a"),
        ("clip_a.safetensors.gz", "clip_a"),
    ] {
        let clip = Clip::load(&fixture(file), Device::Cpu, OutputStride::Os32).unwrap();
        let e = clip.encode_text(&tokens).unwrap();
        assert_close(&format!("{file} text embedding"), &e, &exp[&format!("{key}.text_embedding")], TOL);
    }
}

#[test]
fn prompt_embeddings_average_80_templates() {
    let exp = load("expected_clip.safetensors");
    let clip = Clip::load(&fixture("clip_a.safetensors.gz"), Device::Cpu, OutputStride::Os32).unwrap();
    let mut emb = PromptEmbedder::new(&clip, PromptSet::default().templates).unwrap();
    for (i, p) in ["Ethereal Mist style road", "photo"].iter().enumerate() {
        let e = emb.embed(p).unwrap();
        assert_close(p, &e, &exp[&format!("clip_a.prompt_embedding{i}")], TOL);
        assert!((e.norm().double_value(&[]) - 1.0).abs() < 1e-6);
    }
}

#[test]
fn class_prompts_use_styles_and_photo_for_ignore() {
    let p = PromptSet::default();
    let mut rng = famix::rng::Rng::new(1);
    assert_eq!(p.class_prompt(255, &mut rng, None).unwrap(), "photo");
    let s = p.class_prompt(13, &mut rng, None).unwrap();
    assert!(s.ends_with(" car") && p.random_styles.iter().any(|st| s.starts_with(st.as_str())), "{s}");
    assert_eq!(p.class_prompt(0, &mut rng, Some("driving at night")).unwrap(), "driving at night road");
    // Seeded: the same draws for the same seed.
    let a: Vec<String> = (0..5).map(|c| p.class_prompt(c, &mut famix::rng::Rng::new(9), None).unwrap()).collect();
    let b: Vec<String> = (0..5).map(|c| p.class_prompt(c, &mut famix::rng::Rng::new(9), None).unwrap()).collect();
    assert_eq!(a, b);
    assert!(p.class_prompt(40, &mut rng, None).is_err());
}

#[test]
fn cli_tokenize_encode_text_and_zero_shot() {
    let (code, out, err) = run_famix(&["tokenize", "a photo of a cat", "--pad"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids = v["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0].as_u64(), Some(SOT as u64));
    assert_eq!(v["text"], "a photo of a cat");

    let exp = load("expected_clip.safetensors");
    let clip = fixture("clip_a_state.pt.gz");
    let (code, out, err) = run_famix(&["encode-text", "--clip", clip.to_str().unwrap(), "--device", "cpu", "a photo of a cat", "photo"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let e: Vec<f32> = lines[1]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_close("encode-text", &Tensor::from_slice(&e), &exp["clip_a.text_embedding"].get(2), TOL);

    let (code, out, err) =
        run_famix(&["encode-text", "--clip", clip.to_str().unwrap(), "--device", "cpu", "--templates", "default", "--normalize", "photo"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let e: Vec<f32> = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_close("encode-text templates", &Tensor::from_slice(&e), &exp["clip_a.prompt_embedding1"], TOL);

    let (code, out, err) = run_famix(&[
        "zero-shot",
        "--clip",
        clip.to_str().unwrap(),
        "--device",
        "cpu",
        "--labels",
        "road,sky,car",
        fixture("img_a.png").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let probs: Vec<f32> = ["road", "sky", "car"].iter().map(|l| v["probs"][l].as_f64().unwrap() as f32).collect();
    assert_close("zero-shot", &Tensor::from_slice(&probs).view([1, 3]), &exp["clip_a.zero_shot_probs"], TOL);
}
