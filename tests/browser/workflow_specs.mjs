/**
 * Sources of the shareable workflows in workflows/: nodes (core + SparseFlow only), widget values by input
 * name, links by slot name. build_workflows.mjs turns each spec into a graph in the real ComfyUI frontend and
 * saves `app.graph.serialize()`, so the JSON is exactly what the pinned frontend writes and reads.
 *
 * Model file names are those of the Comfy-Org repackaged releases, as ComfyUI's own Wan templates use them
 * (comfyui-workflow-templates: text_to_video_wan, image_to_video_wan, video_wan2_2_5B_ti2v,
 * video_wan2_2_14B_t2v); `models` carries the same download metadata those templates carry.
 */

const HF21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files";
const HF22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files";
const model = (base, directory, name) => ({ name, url: `${base}/${directory}/${name}`, directory });

const UMT5 = model(HF21, "text_encoders", "umt5_xxl_fp8_e4m3fn_scaled.safetensors");
const VAE21 = model(HF21, "vae", "wan_2.1_vae.safetensors");
const VAE22 = model(HF22, "vae", "wan2.2_vae.safetensors");

const NEGATIVE = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，" +
  "多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";
const PROMPT = "a red fox runs through fresh snow in a winter forest, low tracking camera, soft morning light";

/** Text encoder, VAE and the two prompts: the part every Wan workflow shares. */
function textAndVae(vae, y0 = 40) {
  return [
    { id: 2, type: "CLIPLoader", pos: [20, y0 + 130], widgets: { clip_name: UMT5.name, type: "wan", device: "default" },
      models: [UMT5] },
    { id: 3, type: "VAELoader", pos: [20, y0 + 290], widgets: { vae_name: vae.name }, models: [vae] },
    { id: 4, type: "CLIPTextEncode", title: "Positive prompt", pos: [380, y0], size: [400, 170],
      widgets: { text: PROMPT }, color: "#232", bgcolor: "#353" },
    { id: 5, type: "CLIPTextEncode", title: "Negative prompt", pos: [380, y0 + 210], size: [400, 170],
      widgets: { text: NEGATIVE }, color: "#322", bgcolor: "#533" },
  ];
}

const textLinks = [[2, "CLIP", 4, "clip"], [2, "CLIP", 5, "clip"]];

/** Decode and save: sampler output -> VAEDecode -> CreateVideo -> SaveVideo. */
function decode(x, y, fromId, fps) {
  return {
    nodes: [
      { id: 40, type: "VAEDecode", pos: [x, y] },
      { id: 41, type: "CreateVideo", pos: [x, y + 90], widgets: { fps } },
      { id: 42, type: "SaveVideo", pos: [x, y + 220], size: [315, 110],
        widgets: { filename_prefix: "video/sparseflow", format: "auto", codec: "auto" } },
    ],
    links: [[fromId, "LATENT", 40, "samples"], [3, "VAE", 40, "vae"], [40, "IMAGE", 41, "images"], [41, "VIDEO", 42, "video"]],
  };
}

const schedule = (x, y) => ({ id: 10, type: "SparseFlowSchedule", pos: [x, y], size: [340, 300] });
const routing = (x, y, layers, heads, family, id = 11) => ({
  id, type: "SparseFlowRouting", pos: [x, y], size: [430, 0],
  widgets: { preset: "heuristic_sparse_edges", file: "none", layers, heads, family, routing_overrides: "{}" },
});
const patch = (x, y, id = 12, title) => ({ id, type: "SparseFlowPatch", pos: [x, y], size: [430, 0], title,
  widgets: { routing_overrides: "{}" } });

function singleModel({ name, unet, vae, layers, heads, family, latent, fps, sampler, extraNodes = [], extraLinks = [],
  latentFrom = 20 }) {
  const dec = decode(2260, 40, 30, fps);
  return {
    name,
    nodes: [
      { id: 1, type: "UNETLoader", pos: [20, 40], widgets: { unet_name: unet.name, weight_dtype: "default" },
        models: [unet] },
      ...textAndVae(vae),
      schedule(20, 480),
      routing(840, 40, layers, heads, family),
      { id: 13, type: "ModelSamplingSD3", pos: [1320, 40], widgets: { shift: 8 } },
      patch(1320, 160),
      latent,
      { id: 30, type: "KSampler", pos: [1800, 40], size: [330, 262], widgets: sampler },
      ...extraNodes,
      ...dec.nodes,
    ],
    links: [
      ...textLinks,
      [1, "MODEL", 13, "model"], [13, "MODEL", 12, "model"], [10, "SPARSEFLOW_SCHEDULE", 12, "schedule"],
      [11, "SPARSEFLOW_ROUTING", 12, "routing"], [12, "MODEL", 30, "model"],
      [4, "CONDITIONING", 30, "positive"], [5, "CONDITIONING", 30, "negative"], [latentFrom, "LATENT", 30, "latent_image"],
      ...extraLinks, ...dec.links,
    ],
  };
}

const ksampler = (steps, cfg) => ({ seed: 42, control_after_generate: "fixed", steps, cfg, sampler_name: "uni_pc",
  scheduler: "simple", denoise: 1 });

export const SPECS = [
  singleModel({
    name: "wan2.1_t2v_1.3B_sparseflow",
    unet: model(HF21, "diffusion_models", "wan2.1_t2v_1.3B_fp16.safetensors"), vae: VAE21,
    layers: 30, heads: 12, family: "wan2.1", fps: 16, sampler: ksampler(30, 6),
    latent: { id: 20, type: "EmptyHunyuanLatentVideo", pos: [380, 470], widgets: { width: 832, height: 480, length: 81, batch_size: 1 } },
  }),
  (() => {
    const clipVision = model(HF21, "clip_vision", "clip_vision_h.safetensors");
    return singleModel({
      name: "wan2.1_i2v_14B_sparseflow",
      unet: model(HF21, "diffusion_models", "wan2.1_i2v_720p_14B_fp16.safetensors"), vae: VAE21,
      layers: 40, heads: 40, family: "wan2.1", fps: 16, sampler: ksampler(20, 5), latentFrom: 20,
      latent: { id: 20, type: "WanImageToVideo", pos: [380, 470], widgets: { width: 1280, height: 720, length: 81, batch_size: 1 } },
      extraNodes: [
        { id: 21, type: "CLIPVisionLoader", pos: [20, 820], widgets: { clip_name: clipVision.name }, models: [clipVision] },
        { id: 22, type: "LoadImage", pos: [380, 700], size: [315, 320], widgets: { image: "example.png" } },
        { id: 23, type: "CLIPVisionEncode", pos: [20, 920], widgets: { crop: "none" } },
      ],
      extraLinks: [
        [4, "CONDITIONING", 20, "positive"], [5, "CONDITIONING", 20, "negative"], [3, "VAE", 20, "vae"],
        [21, "CLIP_VISION", 23, "clip_vision"], [22, "IMAGE", 23, "image"], [23, "CLIP_VISION_OUTPUT", 20, "clip_vision_output"],
        [22, "IMAGE", 20, "start_image"], [20, "positive", 30, "positive"], [20, "negative", 30, "negative"],
      ],
    });
  })(),
  singleModel({
    name: "wan2.2_ti2v_5B_sparseflow",
    unet: model(HF22, "diffusion_models", "wan2.2_ti2v_5B_fp16.safetensors"), vae: VAE22,
    layers: 30, heads: 24, family: "wan2.2-5b", fps: 24, sampler: ksampler(20, 5),
    latent: { id: 20, type: "Wan22ImageToVideoLatent", pos: [380, 470], widgets: { width: 1280, height: 704, length: 121, batch_size: 1 } },
    extraLinks: [[3, "VAE", 20, "vae"]],
  }),
  (() => {
    const high = model(HF22, "diffusion_models", "wan2.2_t2v_high_noise_14B_fp16.safetensors");
    const low = model(HF22, "diffusion_models", "wan2.2_t2v_low_noise_14B_fp16.safetensors");
    const adv = (first) => ({ add_noise: first ? "enable" : "disable", noise_seed: 42, control_after_generate: "fixed",
      steps: 20, cfg: 3.5, sampler_name: "euler", scheduler: "simple", start_at_step: first ? 0 : 10,
      end_at_step: first ? 10 : 10000, return_with_leftover_noise: first ? "enable" : "disable" });
    const dec = decode(2740, 40, 31, 16);
    return {
      name: "wan2.2_t2v_14B_sparseflow",
      nodes: [
        { id: 1, type: "UNETLoader", title: "High-noise model", pos: [20, 40], widgets: { unet_name: high.name, weight_dtype: "default" }, models: [high] },
        { id: 6, type: "UNETLoader", title: "Low-noise model", pos: [20, 150], widgets: { unet_name: low.name, weight_dtype: "default" }, models: [low] },
        ...textAndVae(VAE21, 150),
        schedule(20, 600),
        routing(840, 40, 40, 40, "wan2.2-14b"),
        { id: 13, type: "ModelSamplingSD3", pos: [1320, 40], widgets: { shift: 8 } },
        { id: 14, type: "ModelSamplingSD3", pos: [1800, 40], widgets: { shift: 8 } },
        patch(1320, 160, 12, "SparseFlow Patch (high noise)"),
        patch(1800, 160, 15, "SparseFlow Patch (low noise)"),
        { id: 20, type: "EmptyHunyuanLatentVideo", pos: [380, 580], widgets: { width: 1280, height: 720, length: 81, batch_size: 1 } },
        { id: 30, type: "KSamplerAdvanced", title: "KSampler (high noise, steps 0-10)", pos: [2280, 40], size: [330, 334], widgets: adv(true) },
        { id: 31, type: "KSamplerAdvanced", title: "KSampler (low noise, steps 10-end)", pos: [2280, 420], size: [330, 334], widgets: adv(false) },
        ...dec.nodes,
      ],
      links: [
        ...textLinks,
        [1, "MODEL", 13, "model"], [6, "MODEL", 14, "model"], [13, "MODEL", 12, "model"], [14, "MODEL", 15, "model"],
        [10, "SPARSEFLOW_SCHEDULE", 12, "schedule"], [10, "SPARSEFLOW_SCHEDULE", 15, "schedule"],
        [11, "SPARSEFLOW_ROUTING", 12, "routing"], [11, "SPARSEFLOW_ROUTING", 15, "routing"],
        [12, "MODEL", 30, "model"], [15, "MODEL", 31, "model"],
        [4, "CONDITIONING", 30, "positive"], [5, "CONDITIONING", 30, "negative"], [20, "LATENT", 30, "latent_image"],
        [4, "CONDITIONING", 31, "positive"], [5, "CONDITIONING", 31, "negative"], [30, "LATENT", 31, "latent_image"],
        ...dec.links,
      ],
    };
  })(),
  (() => {
    const unet = model(HF21, "diffusion_models", "wan2.1_t2v_1.3B_fp16.safetensors");
    const dec = decode(2260, 40, 30, 16);
    return {
      name: "wan2.1_t2v_1.3B_calibrate_then_save",
      nodes: [
        { id: 1, type: "UNETLoader", pos: [20, 40], widgets: { unet_name: unet.name, weight_dtype: "default" }, models: [unet] },
        ...textAndVae(VAE21),
        { id: 13, type: "ModelSamplingSD3", pos: [20, 480], widgets: { shift: 8 } },
        { id: 20, type: "EmptyHunyuanLatentVideo", pos: [380, 470], widgets: { width: 832, height: 480, length: 81, batch_size: 1 } },
        { id: 16, type: "SparseFlowCalibrate", pos: [840, 40], size: [360, 0],
          widgets: { steps: 4, measure_steps: 2, cfg: 6, seed: 42, control_after_generate: "fixed", sampler_name: "uni_pc", scheduler: "simple", error_budget: 0.1 } },
        { id: 17, type: "SparseFlowSaveRouting", pos: [840, 420], size: [360, 0],
          widgets: { filename: "wan2.1_t2v_1.3B_832x480_calibrated", overwrite: false } },
        { id: 18, type: "PreviewAny", title: "Calibration report", pos: [840, 560], size: [360, 200] },
        patch(1320, 40),
        { id: 30, type: "KSampler", pos: [1800, 40], size: [330, 262], widgets: ksampler(30, 6) },
        ...dec.nodes,
      ],
      links: [
        ...textLinks,
        [1, "MODEL", 13, "model"], [13, "MODEL", 16, "model"], [4, "CONDITIONING", 16, "positive"],
        [5, "CONDITIONING", 16, "negative"], [20, "LATENT", 16, "latent"],
        [16, 0, 17, "routing"], [16, 1, 18, "source"], [16, 0, 12, "routing"], [13, "MODEL", 12, "model"],
        [12, "MODEL", 30, "model"], [4, "CONDITIONING", 30, "positive"], [5, "CONDITIONING", 30, "negative"],
        [20, "LATENT", 30, "latent_image"],
        ...dec.links,
      ],
    };
  })(),
  (() => {
    const unet = model(HF21, "diffusion_models", "wan2.1_t2v_1.3B_fp16.safetensors");
    return {
      name: "wan2.1_t2v_1.3B_compare",
      nodes: [
        { id: 1, type: "UNETLoader", pos: [20, 40], widgets: { unet_name: unet.name, weight_dtype: "default" }, models: [unet] },
        ...textAndVae(VAE21),
        { id: 13, type: "ModelSamplingSD3", pos: [20, 480], widgets: { shift: 8 } },
        { id: 20, type: "EmptyHunyuanLatentVideo", pos: [380, 470], widgets: { width: 832, height: 480, length: 81, batch_size: 1 } },
        patch(840, 40),
        { id: 19, type: "SparseFlowCompare", pos: [1320, 40], size: [360, 0],
          widgets: { seed: 42, control_after_generate: "fixed", steps: 30, cfg: 6, sampler_name: "uni_pc", scheduler: "simple" } },
        { id: 24, type: "PreviewImage", title: "Difference |SparseFlow - dense|", pos: [1760, 40], size: [360, 360] },
        { id: 25, type: "PreviewAny", title: "Compare report", pos: [1760, 440], size: [360, 300] },
        { id: 40, type: "VAEDecode", title: "VAE Decode (SparseFlow result)", pos: [1320, 470] },
        { id: 41, type: "CreateVideo", pos: [1320, 570], widgets: { fps: 16 } },
        { id: 42, type: "SaveVideo", pos: [1320, 700], size: [360, 110],
          widgets: { filename_prefix: "video/sparseflow", format: "auto", codec: "auto" } },
      ],
      links: [
        ...textLinks,
        [1, "MODEL", 13, "model"], [13, "MODEL", 12, "model"], [12, "MODEL", 19, "model"],
        [4, "CONDITIONING", 19, "positive"], [5, "CONDITIONING", 19, "negative"], [20, "LATENT", 19, "latent_image"],
        [3, "VAE", 19, "vae"], [19, "difference", 24, "images"], [19, "report", 25, "source"],
        [19, "patched", 40, "samples"], [3, "VAE", 40, "vae"], [40, "IMAGE", 41, "images"], [41, "VIDEO", 42, "video"],
      ],
    };
  })(),
  (() => {
    const unet = model(HF21, "diffusion_models", "wan2.1_t2v_1.3B_fp16.safetensors");
    const dec = decode(2260, 40, 30, 16);
    return {
      name: "wan2.1_t2v_1.3B_quality_target",
      nodes: [
        { id: 1, type: "UNETLoader", pos: [20, 40], widgets: { unet_name: unet.name, weight_dtype: "default" }, models: [unet] },
        ...textAndVae(VAE21),
        { id: 13, type: "ModelSamplingSD3", pos: [20, 480], widgets: { shift: 8 } },
        { id: 20, type: "EmptyHunyuanLatentVideo", pos: [380, 470], widgets: { width: 832, height: 480, length: 81, batch_size: 1 } },
        { id: 19, type: "SparseFlowCalibrateToTarget", pos: [840, 40], size: [360, 0],
          widgets: { metric: "psnr_db", target: 30, preview_steps: 4, cfg: 6, seed: 42, control_after_generate: "fixed",
            sampler_name: "uni_pc", scheduler: "simple" } },
        { id: 18, type: "PreviewAny", title: "Quality target report", pos: [840, 520], size: [360, 240] },
        patch(1320, 40),
        { id: 30, type: "KSampler", pos: [1800, 40], size: [330, 262], widgets: ksampler(30, 6) },
        ...dec.nodes,
      ],
      links: [
        ...textLinks,
        [1, "MODEL", 13, "model"], [13, "MODEL", 19, "model"], [4, "CONDITIONING", 19, "positive"],
        [5, "CONDITIONING", 19, "negative"], [20, "LATENT", 19, "latent"],
        [19, 0, 12, "routing"], [19, 1, 12, "sparsity"], [19, 2, 18, "source"], [13, "MODEL", 12, "model"],
        [12, "MODEL", 30, "model"], [4, "CONDITIONING", 30, "positive"], [5, "CONDITIONING", 30, "negative"],
        [20, "LATENT", 30, "latent_image"],
        ...dec.links,
      ],
    };
  })(),
];
