//! CLIP image tower: architecture inference, every checkpoint format, PyTorch parity
//! (≤ 1e-5 max abs error, same kernels), preprocessing and error paths.
use crate::common;

use common::*;
use famix::clip::preprocess::clip_crop;
use famix::clip::{Clip, OutputStride, ResNetConfig};
use famix::imageops::Image8;
use tch::{Device, Tensor};

const TOL: f64 = 1e-5;

fn check_tower(file: &str, key: &str, expect_fp16: bool) {
    let exp = load("expected_clip.safetensors");
    let mut clip = Clip::load(&fixture(file), Device::Cpu, OutputStride::Os32).unwrap_or_else(|e| panic!("{file}: {e:#}"));
    let x = &exp["x64"];
    tch::no_grad(|| {
        let low = clip.visual.forward_low(x, false);
        assert_close(&format!("{file} layer1"), &low, &exp[&format!("{key}.layer1")], TOL);
        for os in [8, 16, 32] {
            clip.visual.set_output_stride(OutputStride::from_int(os).unwrap());
            let high = clip.visual.forward_high(&low, &|_, _| false);
            assert_close(&format!("{file} layer4 OS{os}"), &high, &exp[&format!("{key}.layer4_os{os}")], TOL);
        }
    });
    clip.visual.set_output_stride(OutputStride::Os32);
    let res = clip.visual.config.input_resolution as usize;
    let img = Image8::open_rgb(&fixture("img_a.png")).unwrap();
    let x = famix::clip::preprocess::preprocess(&img, res, Device::Cpu);
    let e = clip.encode_image(&x).unwrap();
    let ek = if expect_fp16 { format!("{key}_fp16.image_embedding") } else { format!("{key}.image_embedding") };
    assert_close(&format!("{file} embedding"), &e, &exp[&ek], TOL);
}

#[test]
fn torchscript_fp32_matches_pytorch() {
    check_tower("clip_a_script.pt.gz", "clip_a", false);
    check_tower("clip_b_script.pt", "clip_b", false);
}

#[test]
fn torchscript_fp16_weights_match_pytorch() {
    check_tower("clip_a_script_fp16.pt.gz", "clip_a", true);
}

#[test]
fn state_dict_matches_pytorch() {
    check_tower("clip_a_state.pt.gz", "clip_a", false);
    check_tower("clip_b_state.pt", "clip_b", false);
}

#[test]
fn safetensors_matches_pytorch() {
    check_tower("clip_a.safetensors.gz", "clip_a", false);
    check_tower("clip_b.safetensors", "clip_b", false);
}

#[test]
fn architecture_is_inferred_from_shapes() {
    let a = Clip::load(&fixture("clip_a_state.pt.gz"), Device::Cpu, OutputStride::Os32).unwrap();
    assert_eq!(a.visual.config, ResNetConfig { layers: [1, 1, 3, 3], width: 4, output_dim: Some(64), heads: 2, input_resolution: 224 });
    let t = a.text.as_ref().expect("A has a text tower");
    assert_eq!((t.config.width, t.config.heads, t.config.layers, t.config.embed_dim), (32, 2, 2, 64));
    assert_eq!((t.config.vocab_size, t.config.context_length), (49408, 77));
    let b = Clip::load(&fixture("clip_b.safetensors"), Device::Cpu, OutputStride::Os32).unwrap();
    assert_eq!(b.visual.config, ResNetConfig { layers: [2, 1, 2, 4], width: 4, output_dim: Some(48), heads: 2, input_resolution: 64 });
    assert!(b.text.is_none());
    assert!(b.encode_text(&Tensor::zeros([1, 77], (tch::Kind::Int64, Device::Cpu))).is_err());
}

#[test]
fn preprocessing_matches_pil_bit_for_bit() {
    let img = Image8::open_rgb(&fixture("img_a.png")).unwrap();
    for res in [224usize, 64] {
        let ours = clip_crop(&img, res);
        let pil = Image8::open_rgb(&fixture(&format!("img_a_crop{res}.png"))).unwrap();
        assert_eq!(ours, pil, "resize+crop to {res} differs from PIL");
    }
}

#[test]
fn truncated_checkpoint_is_a_clear_error() {
    let dir = tmpdir();
    for (name, gz) in [("clip_b_state.pt", false), ("clip_b_script.pt", false), ("clip_b.safetensors", false), ("clip_a_state.pt.gz", true)]
    {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let cut = dir.path().join(format!("cut_{name}"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = Clip::load(&cut, Device::Cpu, OutputStride::Os32).expect_err("truncated file must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains(&cut.display().to_string()), "error names the file: {msg}");
        if gz {
            assert!(msg.contains("gzip"), "{msg}");
        }
    }
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, b"").unwrap();
    let msg = format!("{:#}", Clip::load(&empty, Device::Cpu, OutputStride::Os32).err().unwrap());
    assert!(msg.contains("empty"), "{msg}");
}

fn rewrite(src: &str, dst: &std::path::Path, f: impl Fn(Vec<(String, Tensor)>) -> Vec<(String, Tensor)>) {
    let loaded = famix::io::archive::load_file(&fixture(src)).unwrap();
    famix::io::archive::save_safetensors(dst, &f(loaded.tensors), None).unwrap();
}

#[test]
fn wrong_keys_and_shapes_are_listed() {
    let dir = tmpdir();
    let p = dir.path().join("renamed.safetensors");
    rewrite("clip_b.safetensors", &p, |ts| {
        ts.into_iter()
            .map(|(k, v)| if k == "visual.layer1.0.conv1.weight" { ("visual.layer1.0.conv9.weight".into(), v) } else { (k, v) })
            .collect()
    });
    let msg = format!("{:#}", Clip::load(&p, Device::Cpu, OutputStride::Os32).err().unwrap());
    assert!(msg.contains("missing keys") && msg.contains("visual.layer1.0.conv1.weight"), "{msg}");
    assert!(msg.contains("unexpected keys") && msg.contains("visual.layer1.0.conv9.weight"), "{msg}");

    let p = dir.path().join("reshaped.safetensors");
    rewrite("clip_b.safetensors", &p, |ts| {
        ts.into_iter()
            .map(|(k, v)| {
                if k == "visual.layer2.0.conv2.weight" {
                    (k, Tensor::zeros([8, 8, 1, 1], (tch::Kind::Float, Device::Cpu)))
                } else {
                    (k, v)
                }
            })
            .collect()
    });
    let msg = format!("{:#}", Clip::load(&p, Device::Cpu, OutputStride::Os32).err().unwrap());
    assert!(msg.contains("wrong shapes") && msg.contains("visual.layer2.0.conv2.weight"), "{msg}");

    let p = dir.path().join("nothing.safetensors");
    rewrite("clip_b.safetensors", &p, |_| vec![("foo".into(), Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)))]);
    let msg = format!("{:#}", Clip::load(&p, Device::Cpu, OutputStride::Os32).err().unwrap());
    assert!(msg.contains("no CLIP image tower"), "{msg}");
}

#[test]
fn cli_encode_image_prints_pytorch_embedding() {
    let exp = load("expected_clip.safetensors");
    let (code, out, err) = run_famix(&[
        "encode-image",
        "--clip",
        fixture("clip_a_script.pt.gz").to_str().unwrap(),
        fixture("img_a.png").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(v["image"].as_str().unwrap().ends_with("img_a.png"));
    let emb: Vec<f32> = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let t = Tensor::from_slice(&emb).view([1, -1]);
    assert_close("cli embedding", &t, &exp["clip_a.image_embedding"], TOL);

    let (code, out, _) = run_famix(&[
        "encode-image",
        "--normalize",
        "--clip",
        fixture("clip_b.safetensors").to_str().unwrap(),
        fixture("img_a.png").to_str().unwrap(),
        "/nonexistent.png",
        "--device",
        "cpu",
    ]);
    assert_eq!(code, 2, "a failed image gives exit code 2");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let n: f64 = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
    assert!((n - 1.0).abs() < 1e-5, "normalised embedding has norm² {n}");
}
