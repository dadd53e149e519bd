"""The variant table: the one home of every variant's hyper-parameters, files and MD5s.

Everything else (model construction, weight download, sequence lengths, export, benchmarks)
reads from here. Shapes and formulas follow `spec/ARCHITECTURE.md`.
"""

import dataclasses
import math
from dataclasses import dataclass

from .errors import UsageError

SYNC_FPS = 25
CLIP_FPS = 8
SYNC_SEGMENT = 16  # frames per Synchformer segment
SYNC_HOP = 8  # frames between segment starts
SYNC_SIZE = 224
CLIP_SIZE = 384
MIN_DURATION = SYNC_SEGMENT / SYNC_FPS  # one segment: 0.64 s (spec §1.2)
# MotionFormer tokens of one segment: tubelets of 2 frames x 16 x 16 pixels.
PATCH = 16
TUBELET = 2
TIME_TOKENS = SYNC_SEGMENT // TUBELET  # 8 feature frames per segment
SPACE_TOKENS = (SYNC_SIZE // PATCH) ** 2  # 14 x 14 patches per feature frame
SEGMENT_TOKENS = TIME_TOKENS * SPACE_TOKENS  # 1568 (t-major, then h, w)
T5_MAX_TOKENS = 512  # Flan-T5 tokenizer truncation (spec §2.1)
DEFAULT_DURATION = 8.0
DEFAULT_STEPS = 25
DEFAULT_CFG = 4.5
FLOWLEY_CFG = 7.5  # the official sample.yaml
DEFAULT_SEED = 42
# Least overlap of the windows a clip longer than DEFAULT_DURATION is generated in (seconds, a
# multiple of SYNC_HOP / SYNC_FPS = 0.32 s); see runtime/windows.py.
WINDOW_OVERLAP = 1.28


@dataclass(frozen=True)
class AudioConfig:
    """Latent/mel/waveform geometry of one sample rate (spec §1.4, §6)."""

    sample_rate: int
    hop: int  # mel hop in samples; one latent frame is two mel frames
    n_fft: int
    num_mels: int
    fmax: float
    log_base: str  # "log10" (16k) or "ln" (44k) mel compression


AUDIO_16K = AudioConfig(16000, 256, 1024, 80, 8000.0, "log10")
AUDIO_44K = AudioConfig(44100, 512, 2048, 128, 22050.0, "ln")


@dataclass(frozen=True)
class SequenceLengths:
    """Every sequence length that follows from a duration (spec §1.4, `SequenceConfig`)."""

    duration: float
    latent: int  # N
    clip: int  # CLIP frames at 8 fps
    sync_segments: int  # S
    sync: int  # 8 * S feature rows
    audio_samples: int  # not trimmed to the duration
    sync_frames: int  # frames decoded at 25 fps


def sequence_lengths(duration: float, audio: AudioConfig) -> SequenceLengths:
    """Sequence lengths for `duration` seconds, with the official float formulas."""
    latent = math.ceil(duration * audio.sample_rate / audio.hop / 2)
    segments = int((duration * SYNC_FPS - SYNC_SEGMENT) // SYNC_HOP + 1)
    sync_frames = int(SYNC_FPS * duration)
    # The video encoder's own count; the two formulas can disagree in principle (spec §1.4).
    encoder_segments = (sync_frames - SYNC_SEGMENT) // SYNC_HOP + 1
    if segments != encoder_segments:
        raise UsageError(
            f"duration {duration!r} s gives {segments} sync segments by the generator's formula "
            f"but {encoder_segments} by the video encoder's; pick a duration like {duration:.2f}"
        )
    if segments < 1:
        raise UsageError(
            f"duration {duration:.3f} s is shorter than one {SYNC_SEGMENT}-frame segment "
            f"({MIN_DURATION:.2f} s)"
        )
    return SequenceLengths(
        duration=duration,
        latent=latent,
        clip=int(duration * CLIP_FPS),
        sync_segments=segments,
        sync=segments * SYNC_SEGMENT // 2,
        audio_samples=latent * audio.hop * 2,
        sync_frames=sync_frames,
    )


@dataclass(frozen=True)
class GeneratorConfig:
    """MM-DiT generator (spec §4.2). `depth` counts joint and fused blocks together."""

    latent_dim: int
    hidden_dim: int
    depth: int
    fused_depth: int
    num_heads: int
    v2: bool = False
    clip_dim: int = 1024
    sync_dim: int = 768
    text_dim: int = 1024
    text_seq_len: int = 77
    mlp_ratio: float = 4.0
    # MMAudioSep: channels of the mixture latent concatenated after the noisy latent at the
    # input convolution (0: plain MMAudio/SELVA; latent_dim: separation).
    mixture_dim: int = 0


@dataclass(frozen=True)
class FlowleyConfig:
    """Flowley DiT (SEEDS.md §2.2; official kwarg names in comments). The audio and video
    lengths follow from the duration; the released model was trained at 8 s (La 250, Lv 64)."""

    latent_dim: int = 20  # audio_dim
    text_dim: int = 1024  # Flan-T5-large width
    video_dim: int = 768  # DFN2B-CLIP ViT-L/14 embedding width
    hidden_dim: int = 512
    text_seq_len: int = 77
    video_fps: float = 8.0
    multi_depth: int = 5  # multi_n_layers
    multi_heads: int = 8
    single_depth: int = 10  # single_n_layers: applications of the one tied block
    single_heads: int = 8
    mask_window: int = 0  # mask_window_size
    mask_fade_range: int = 4  # cosine fade
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class VideoEncoderConfig:
    """MotionFormer trunk plus, when `num_sup_tokens` > 0, SELVA's text selection (spec §3).

    `num_sup_tokens == 0` is the plain Synchformer video branch MMAudio uses.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    text_dim: int = 768  # Flan-T5 width
    num_sup_tokens: int = 5
    xattn_depth: int = 1


@dataclass(frozen=True)
class VAEConfig:
    data_dim: int  # mel bins
    embed_dim: int  # latent channels
    hidden_dim: int


@dataclass(frozen=True)
class VocoderConfig:
    """BigVGAN generator (spec §6.2, §6.3)."""

    num_mels: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5),) * 3
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True


@dataclass(frozen=True)
class T5Config:
    """Flan-T5 encoder geometry (the transformers config of `google/flan-t5-base`)."""

    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_kv: int = 64
    d_ff: int = 2048
    vocab_size: int = 32128
    max_length: int = T5_MAX_TOKENS
    # Flowley: every prompt padded (and truncated) to this many tokens, as its released
    # features were; None pads to the longest prompt (SELVA).
    pad_to: int | None = None


@dataclass(frozen=True)
class ClipConfig:
    """open_clip `ViT-H-14-378-quickgelu` (DFN5B) towers. `image_layers == 0`: text tower only."""

    text_width: int = 1024
    text_layers: int = 24
    text_heads: int = 16
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 1024  # joint embedding width (image projection output)
    image_width: int = 1280
    image_layers: int = 32
    image_heads: int = 16
    patch_size: int = 14
    image_size: int = 378  # position table size; the 384 input leaves 6 pixels unused
    frame_size: int = CLIP_SIZE  # the square the video frames are resized to


# VATT (VATT.md; golden README "VATT cases"). Defaults are the released full-size models.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The official Prompter templates "alpaca_short" (LLaMA) and "gemma".
LLAMA_PROMPT = "### Instruction:\n{}\n\n### Response:\n"
GEMMA_PROMPT = "<bos><start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model"


@dataclass(frozen=True)
class Eva02Config:
    """open_clip `EVA02-L-14-336` image tower = timm `eva02_large_patch14_clip_336` (SwiGLU with
    its inner LayerNorm, 2-D RoPE on the patch grid, class-token pool, head width -> embed_dim),
    with open_clip's eval transform (bicubic short side to `image_size`, centre crop, OpenAI
    mean/std)."""

    width: int = 1024
    depth: int = 24
    heads: int = 16
    patch_size: int = 14
    image_size: int = 336
    embed_dim: int = 768
    mlp_ratio: float = 4 * 2 / 3  # SwiGLU hidden width int(width * mlp_ratio) (2730)
    rope_ref_grid: int = 16  # timm ref_feat_shape (16, 16): the 224 px pretraining grid
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD


@dataclass(frozen=True)
class VattConverterConfig:
    """The VATT Converter LLM (`encode_all_states`): Vicuna-7B (LLaMA-1) or gemma-2b, each with
    `video_proj` and an unmerged LoRA delta on q_proj and v_proj."""

    family: str  # "llama" | "gemma"
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rms_eps: float = 1e-6  # LLaMA: from the Vicuna config.json (1e-6 for LLaMA-1, unverified)
    rope_theta: float = 10000.0
    lora_rank: int = 16
    lora_alpha: int = 32
    video_dim: int = 768  # eva02 feature width
    video_frames: int = 50  # asserted by the official LLM: 10 s at 5 fps
    video_tokens: int = 10  # adaptive average pooling 50 -> 10 (means of 5 frames)
    max_prompt_tokens: int = 64  # tokenizer truncation, EOS appended when shorter
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = 0
    prompt_template: str = LLAMA_PROMPT

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_rank


@dataclass(frozen=True)
class VattAudioConfig:
    """VATT Audio (`VT2AModel`), named as its constructor's kwargs. `num_layers` counts encoder
    (attention, multiway FF) pairs; attention heads are always 64 wide (x-transformers
    DEFAULT_DIM_HEAD). The sampler fills `audio_seq_len` frames (hard-coded 500 officially)."""

    latent_dim: int = 128
    n_codebooks: int = 4
    num_tokens: int = 2048  # codebook size; the MASK id is num_tokens
    audio_seq_len: int = 500
    visual_seq_len: int = 500  # pos_embed holds visual_seq_len + audio_seq_len rows
    dim: int = 1024
    num_layers: int = 12
    num_heads: int = 16
    dec_num_layers: int = 12
    dec_num_heads: int = 16
    encoder_dim: int = 4096  # the converter's hidden width
    dim_head: int = 64
    ff_mult: int = 4


@dataclass(frozen=True)
class EncodecConfig:
    """audiocraft EncodecModel, AudioGen's 16 kHz compression model (encodec_large_nq4_s320):
    non-causal SEANet with weight norm, ELU, constant padding, a 2-layer LSTM, RVQ."""

    sample_rate: int = 16000
    channels: int = 1
    dimension: int = 128
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 5, 4, 2)
    n_residual_layers: int = 1
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 7
    dilation_base: int = 2
    compress: int = 2
    lstm_layers: int = 2
    n_q: int = 4
    bins: int = 2048

    @property
    def hop(self) -> int:
        """Samples per token frame (320: 50 Hz at 16 kHz)."""
        return math.prod(self.ratios)


@dataclass(frozen=True)
class MaskGitConfig:
    """MaskGIT sampling as the official scripts call `generate_audio_sample` (cfg_coef 5,
    mask_temperature 25.5; the function's own defaults are 3.0 and 10.5)."""

    steps: int = 16
    cfg: float = 5.0
    mask_temperature: float = 25.5
    sampling_temperature: float = 1.0
    top_k: int = 256


@dataclass(frozen=True)
class VattConfig:
    """Every network of a VATT variant. One window is `window` seconds: eva02 features at
    `feature_fps` (converter.video_frames of them) and audio_seq_len Encodec frames."""

    image: Eva02Config
    converter: VattConverterConfig
    audio: VattAudioConfig
    encodec: EncodecConfig
    sampler: MaskGitConfig = MaskGitConfig()
    window: float = 10.0
    feature_fps: int = 5

    def __post_init__(self):
        frames = self.window * self.feature_fps
        if frames != self.converter.video_frames:
            raise ValueError(f"{self.window} s at {self.feature_fps} fps is not {frames} frames")
        if self.audio.encoder_dim != self.converter.hidden:
            raise ValueError("VATT Audio's encoder_dim must be the converter's hidden width")
        if self.audio.audio_seq_len * self.encodec.hop != self.window * self.encodec.sample_rate:
            raise ValueError("audio_seq_len Encodec frames must cover the window")


@dataclass(frozen=True)
class WeightFile:
    """One file of a variant: where the hub keeps it and its MD5 (None where none is published).

    `source`: a page to fetch the file from by hand, for files outside the hub; `repo`/`path`
    then only name where it goes under the weights home."""

    role: str
    repo: str
    path: str
    md5: str | None = None
    source: str | None = None
    published: bool = True  # False: no hub holds it yet (MMAudioSep); the user puts it in place
    licence: str | None = None  # the weights' own terms where they differ from the code's


@dataclass(frozen=True)
class Variant:
    name: str
    audio: AudioConfig | None  # None: VATT (its waveform geometry is Encodec's, VattConfig)
    generator: GeneratorConfig | FlowleyConfig | VattConfig
    video_encoder: VideoEncoderConfig | None  # None: no Synchformer features (Flowley, VATT)
    vae: VAEConfig | None  # None: VATT decodes Encodec tokens, no mel VAE or vocoder
    vocoder: VocoderConfig | None
    clip: ClipConfig | None  # None: VATT (its image tower is eva02, VattConfig.image)
    t5: T5Config | None  # None: the variant takes no Flan-T5 prompt (plain MMAudio)
    files: tuple[WeightFile, ...] = ()
    uses_clip_video: bool = False  # MMAudio; SELVA replaces CLIP video with the empty feature
    description: str = ""
    random_weights: bool = False  # `tiny`: weights are made locally, never downloaded
    cfg: float = DEFAULT_CFG  # default guidance strength
    # MMAudioSep's own video reader scales the short side to 224 and centre-crops the
    # Synchformer frames; SELVA and MMAudio's demo squash them to 224x224.
    sync_center_crop: bool = False

    @property
    def selective(self) -> bool:
        return self.video_encoder is not None and self.video_encoder.num_sup_tokens > 0

    @property
    def flowley(self) -> bool:
        """Flowley's DiT: CLIP image + Flan-T5 conditions, no sync features (SEEDS.md §2)."""
        return isinstance(self.generator, FlowleyConfig)

    @property
    def vatt(self) -> bool:
        """VATT: an LLM condition and MaskGIT over Encodec tokens (VATT.md)."""
        return isinstance(self.generator, VattConfig)

    @property
    def separation(self) -> bool:
        """MMAudioSep: the generator also reads a mixture latent (`selva-rt separate`)."""
        return isinstance(self.generator, GeneratorConfig) and self.generator.mixture_dim > 0

    @property
    def family(self) -> str:
        """The model family that runs the variant (runtime/families): mmaudio or flowley."""
        return "flowley" if self.flowley else "mmaudio"

    @property
    def takes_negative_prompt(self) -> bool:
        """Flowley's unconditional branch is zero features: it has no negative prompt."""
        return not self.flowley

    def file(self, role: str) -> WeightFile:
        for f in self.files:
            if f.role == role:
                return f
        raise KeyError(f"variant {self.name} has no {role!r} file")

    def sequence_lengths(self, duration: float = DEFAULT_DURATION) -> SequenceLengths:
        return sequence_lengths(duration, self.audio)


SELVA_REPO = "jnwnlee/SelVA"
MMAUDIO_REPO = "hkchengrex/MMAudio"
T5_REPO = "google/flan-t5-base"
CLIP_REPO = "apple/DFN5B-CLIP-ViT-H-14-384"
BIGVGAN_V2_REPO = "nvidia/bigvgan_v2_44khz_128band_512x"

VAE_16K = VAEConfig(data_dim=80, embed_dim=20, hidden_dim=384)
VAE_44K = VAEConfig(data_dim=128, embed_dim=40, hidden_dim=512)
BIGVGAN_16K = VocoderConfig(
    num_mels=80,
    upsample_rates=(4, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
    upsample_initial_channel=1536,
)
BIGVGAN_V2_44K = VocoderConfig(
    num_mels=128,
    upsample_rates=(8, 4, 2, 2, 2, 2),
    upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),
    upsample_initial_channel=1536,
    use_tanh_at_final=False,
    use_bias_at_final=False,
)

SMALL = dict(hidden_dim=448, depth=12, fused_depth=8, num_heads=7)
MEDIUM = dict(hidden_dim=896, depth=12, fused_depth=8, num_heads=14)
LARGE = dict(hidden_dim=896, depth=21, fused_depth=14, num_heads=14)

T5_FILES = tuple(
    WeightFile("t5", T5_REPO, p)
    for p in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "spiece.model",
    )
)
CLIP_FILES = (WeightFile("clip", CLIP_REPO, "open_clip_pytorch_model.bin"),)
SYNCHFORMER_FILE = WeightFile(
    "synchformer",
    MMAUDIO_REPO,
    "ext_weights/synchformer_state_dict.pth",
    "5b2f5594b0730f70e41e549b7c94390c",
)
MMAUDIO_16K_FILES = (
    WeightFile("vae", MMAUDIO_REPO, "ext_weights/v1-16.pth", "69f56803f59a549a1a507c93859fd4d7"),
    WeightFile(
        "vocoder", MMAUDIO_REPO, "ext_weights/best_netG.pt", "eeaf372a38a9c31c362120aba2dde292"
    ),
)
MMAUDIO_44K_FILES = (
    WeightFile("vae", MMAUDIO_REPO, "ext_weights/v1-44.pth", "fab020275fa44c6589820ce025191600"),
    WeightFile("vocoder", BIGVGAN_V2_REPO, "bigvgan_generator.pt"),
    WeightFile("vocoder_config", BIGVGAN_V2_REPO, "config.json"),
)


def _mmaudio(name: str, size: dict, latent_dim: int, md5: str, *, v2: bool = False) -> Variant:
    is_16k = latent_dim == 20
    return Variant(
        name=f"mmaudio-{name.replace('_', '-')}",
        audio=AUDIO_16K if is_16k else AUDIO_44K,
        generator=GeneratorConfig(latent_dim=latent_dim, v2=v2, **size),
        video_encoder=VideoEncoderConfig(num_sup_tokens=0, xattn_depth=0),
        vae=VAE_16K if is_16k else VAE_44K,
        vocoder=BIGVGAN_16K if is_16k else BIGVGAN_V2_44K,
        clip=ClipConfig(),
        t5=None,
        files=(
            WeightFile("generator", MMAUDIO_REPO, f"weights/mmaudio_{name}.pth", md5),
            SYNCHFORMER_FILE,
            *(MMAUDIO_16K_FILES if is_16k else MMAUDIO_44K_FILES),
            *CLIP_FILES,
        ),
        uses_clip_video=True,
        description=f"MMAudio {name} (CLIP video + Synchformer features)",
    )


SELVA_SMALL_16K = Variant(
    name="selva-small-16k",
    audio=AUDIO_16K,
    generator=GeneratorConfig(latent_dim=20, **SMALL),
    video_encoder=VideoEncoderConfig(),
    vae=VAE_16K,
    vocoder=BIGVGAN_16K,
    clip=ClipConfig(image_layers=0),
    t5=T5Config(),
    files=(
        WeightFile(
            "generator",
            SELVA_REPO,
            "weights/generator_small_16k_sup_5.pth",
            "1cb0f0deec52de37f67b1fd9965337d0",
        ),
        WeightFile(
            "video_encoder",
            SELVA_REPO,
            "weights/video_enc_sup_5.pth",
            "ff09a6dc36148536ee4db97eba081d05",
        ),
        WeightFile("vae", SELVA_REPO, "ext_weights/v1-16.pth", "69f56803f59a549a1a507c93859fd4d7"),
        WeightFile(
            "vocoder", SELVA_REPO, "ext_weights/best_netG.pt", "eeaf372a38a9c31c362120aba2dde292"
        ),
        *T5_FILES,
        *CLIP_FILES,
    ),
    description="SELVA small 16 kHz: selective video-to-audio (the published model)",
)

# Same structure as the golden `e2e_tiny` case (gen_small_v1, textsynch_small, vae_dec_16k,
# bigvgan_16k), with small text encoders, so tests and the offline demo run the real code paths.
TINY = Variant(
    name="tiny",
    audio=AUDIO_16K,
    generator=GeneratorConfig(
        latent_dim=20,
        hidden_dim=64,
        depth=4,
        fused_depth=2,
        num_heads=2,
        clip_dim=48,
        sync_dim=64,
        text_dim=40,
    ),
    video_encoder=VideoEncoderConfig(embed_dim=64, depth=2, num_heads=2),
    vae=VAEConfig(data_dim=80, embed_dim=20, hidden_dim=16),
    vocoder=VocoderConfig(
        num_mels=80,
        upsample_rates=(4, 4, 2, 2, 2, 2),
        upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
        upsample_initial_channel=128,
    ),
    clip=ClipConfig(text_width=40, text_layers=2, text_heads=2, embed_dim=40, image_layers=0),
    t5=T5Config(d_model=768, num_layers=1, num_heads=2, d_kv=32, d_ff=128, vocab_size=512),
    description="tiny random weights, SELVA structure (tests and demo; output is noise)",
    random_weights=True,
)

FLOWLEY_REPO = "Fsoft-AIC/Flowley"
FLOWLEY_WEIGHTS = "https://drive.google.com/drive/folders/1KJlLUXE0Ddr46xx0X1-4ft9tGF9nisC7"
DFN2B_CLIP_REPO = "apple/DFN2B-CLIP-ViT-L-14"
T5_LARGE_REPO = "google/flan-t5-large"
# open_clip `ViT-L-14-quickgelu` (dfn2b): 224 px, 16 x 16 patches, 768-d embedding.
DFN2B_CLIP = ClipConfig(
    text_width=768,
    text_layers=12,
    text_heads=12,
    embed_dim=768,
    image_width=1024,
    image_layers=24,
    image_heads=16,
    image_size=224,
    frame_size=224,
)
FLAN_T5_LARGE = T5Config(d_model=1024, num_layers=24, num_heads=16, d_ff=2816, pad_to=77)

FLOWLEY = Variant(
    name="flowley",
    audio=AUDIO_16K,
    generator=FlowleyConfig(),
    video_encoder=None,
    vae=VAE_16K,
    vocoder=BIGVGAN_16K,
    clip=DFN2B_CLIP,
    t5=FLAN_T5_LARGE,
    files=(
        WeightFile(
            "generator",
            FLOWLEY_REPO,
            "ema_final_0-60000_step=5000.pth",
            source=FLOWLEY_WEIGHTS,
        ),
        *MMAUDIO_16K_FILES,
        *(
            WeightFile("t5", T5_LARGE_REPO, f.path)
            for f in T5_FILES  # the same six files as flan-t5-base
        ),
        WeightFile("clip", DFN2B_CLIP_REPO, "open_clip_pytorch_model.bin"),
    ),
    uses_clip_video=True,
    description="Flowley (DFN2B-CLIP video at 8 fps + Flan-T5-large text, PSCA DiT), 16 kHz",
    cfg=FLOWLEY_CFG,
)

# The golden `flowley_gen_small` geometry with tiny encoders: tests and the offline demo.
TINY_FLOWLEY = Variant(
    name="tiny-flowley",
    audio=AUDIO_16K,
    generator=FlowleyConfig(
        hidden_dim=64,
        text_dim=128,
        video_dim=96,
        multi_depth=2,
        multi_heads=2,
        single_depth=4,
        single_heads=2,
    ),
    video_encoder=None,
    vae=TINY.vae,
    vocoder=TINY.vocoder,
    clip=ClipConfig(
        text_width=32,
        text_layers=1,
        text_heads=2,
        embed_dim=96,
        image_width=32,
        image_layers=2,
        image_heads=2,
        image_size=224,
        frame_size=224,
    ),
    t5=T5Config(
        d_model=128, num_layers=1, num_heads=2, d_kv=32, d_ff=128, vocab_size=512, pad_to=77
    ),
    uses_clip_video=True,
    description="tiny random weights, Flowley structure (tests and demo; output is noise)",
    random_weights=True,
    cfg=FLOWLEY_CFG,
)


MMAUDIOSEP_REPO = "sony/mmaudiosep"  # no weights published there yet (spec SEEDS.md §1.5)


def _mmaudiosep(name: str, size: dict, latent_dim: int) -> Variant:
    """MMAudioSep: MMAudio's networks with a 2C-channel input conv and the VAE encoder. The
    generator file has no URL or MD5 anywhere; its name is the one the official code expects."""
    base = _mmaudio(name, size, latent_dim, md5="")
    generator = WeightFile(
        "generator", MMAUDIOSEP_REPO, f"weights/mmaudiosep_{name}.pth", published=False
    )
    return dataclasses.replace(
        base,
        name=f"mmaudiosep-{name.replace('_', '-')}",
        generator=dataclasses.replace(base.generator, mixture_dim=latent_dim),
        files=(generator, *base.files[1:]),
        sync_center_crop=True,
        description=f"MMAudioSep {name}: separation by text and/or video query (weights pending)",
    )


# `tiny`'s sizes with MMAudioSep's structure (CLIP video, plain Synchformer, mixture input), so
# `selva-rt separate` and its tests run every code path offline.
TINY_SEP = Variant(
    name="tiny-sep",
    audio=AUDIO_16K,
    generator=dataclasses.replace(TINY.generator, mixture_dim=20),
    video_encoder=VideoEncoderConfig(
        embed_dim=64, depth=1, num_heads=2, num_sup_tokens=0, xattn_depth=0
    ),
    vae=TINY.vae,
    vocoder=TINY.vocoder,
    clip=ClipConfig(
        text_width=40,
        text_layers=2,
        text_heads=2,
        embed_dim=48,
        image_width=32,
        image_layers=1,
        image_heads=2,
    ),
    t5=None,
    uses_clip_video=True,
    description="tiny random weights, MMAudioSep structure (tests and demo; output is noise)",
    random_weights=True,
    sync_center_crop=True,
)

# VATT: the authors' files are archives on Dropbox and Google Drive (official README and
# setup_inference.sh); unzip them under <weights home>/vatt/ so the paths below exist. The names
# inside the archives come from setup_inference.sh and the configs; the Gemma ones are unverified.
VATT_HOME = "vatt"  # by-hand files live under <weights home>/vatt/
VATT_MODELS = (
    "https://www.dropbox.com/scl/fi/o1663dvgavdtgryltqvmq/vatt_models.zip"
    "?rlkey=yzk7o6fb6kpdvs7mnke03t3c0&st=wr75y7xn&dl=0"
)
VICUNA_BASE = "https://drive.google.com/file/d/1rjg-_DKzpxCxX51gwiFD3vYv3iKBPQNM"
VICUNA_DELTA = "https://drive.google.com/file/d/1Z-R72RXCapiWUcc35qq8vkzv7U9jrCKu"
GEMMA_BASE = (
    "https://www.dropbox.com/scl/fi/z1x100rbp6fim0n54hi7e/gemma_2b.zip"
    "?rlkey=2q04foi9kmu727cbxexs56t6h&st=09517hbo&dl=0"
)
GEMMA_DELTA = (
    "https://www.dropbox.com/scl/fi/uvq21ybjnhkj3uv1xik7b/gemma-finetuned-checkpoint-231000.zip"
    "?rlkey=2x077622qaz5jsgkt2dq4diyj&st=93zcldbf&dl=0"
)
VATT_CODEBOOKS = "https://drive.google.com/file/d/1LdGOtB1s91Lc6Gi45ZD9cSZp6-1qHhLP"
AUDIOGEN_REPO = "facebook/audiogen-medium"  # = the authors' audiogen_models.zip
EVA02_REPO = "timm/eva02_large_patch14_clip_336.merged2b_s6b_b61k"
CC_BY_NC = "CC-BY-NC 4.0 (AudioGen/Encodec weights, audiocraft LICENSE_weights)"
LLAMA_TERMS = "LLaMA licence (non-commercial research) and Vicuna terms"
GEMMA_TERMS = "Gemma Terms of Use"
VATT_TERMS = "no weight licence stated (code BSD-4-Clause); holds LLM-derived weights"

VATT_SHARED_FILES = (
    WeightFile(
        "codebooks",
        VATT_HOME,
        "meta_pretrain_vgg_encodec_embed.pt",
        source=VATT_CODEBOOKS,
        licence=CC_BY_NC,
    ),
    WeightFile("encodec", AUDIOGEN_REPO, "compression_state_dict.bin", licence=CC_BY_NC),
    WeightFile("eva02", EVA02_REPO, "open_clip_pytorch_model.bin", licence="MIT (model card)"),
)
VATT_LLAMA_CONVERTER = VattConverterConfig(
    family="llama",
    vocab_size=32000,
    hidden=4096,
    layers=32,
    heads=32,
    kv_heads=32,
    head_dim=128,
    intermediate=11008,
)
VATT_GEMMA_CONVERTER = VattConverterConfig(
    family="gemma",
    vocab_size=256000,
    hidden=2048,
    layers=18,
    heads=8,
    kv_heads=1,
    head_dim=256,
    intermediate=16384,
    bos_id=2,
    eos_id=1,
    pad_id=0,
    prompt_template=GEMMA_PROMPT,
)


def _vatt_config(converter: VattConverterConfig) -> VattConfig:
    return VattConfig(
        image=Eva02Config(),
        converter=converter,
        audio=VattAudioConfig(encoder_dim=converter.hidden),
        encodec=EncodecConfig(),
    )


def _vatt(name: str, config: VattConfig, files: tuple, description: str, **kw) -> Variant:
    return Variant(
        name=name,
        audio=None,
        generator=config,
        video_encoder=None,
        vae=None,
        vocoder=None,
        clip=None,
        t5=None,
        files=files,
        description=description,
        cfg=config.sampler.cfg,
        **kw,
    )


VATT_LLAMA = _vatt(
    "vatt-llama",
    _vatt_config(VATT_LLAMA_CONVERTER),
    (
        WeightFile(
            "vatt",
            VATT_HOME,
            "vatt_models/vatt_llama_T_final.ckpt",
            source=VATT_MODELS,
            licence=VATT_TERMS,
        ),
        *(
            WeightFile("llm", VATT_HOME, f"vicuna/{f}", source=VICUNA_BASE, licence=LLAMA_TERMS)
            for f in ("config.json", "tokenizer.model")
        ),
        WeightFile(
            "llm_delta",
            VATT_HOME,
            "checkpoint-117000/pytorch_model.bin",
            source=VICUNA_DELTA,
            licence=LLAMA_TERMS,
        ),
        *VATT_SHARED_FILES,
    ),
    "VATT-LLaMA-T: Vicuna-7B converter + VATT Audio (MaskGIT over AudioGen Encodec tokens)",
)
VATT_GEMMA = _vatt(
    "vatt-gemma",
    _vatt_config(VATT_GEMMA_CONVERTER),
    (
        WeightFile(
            "vatt",
            VATT_HOME,
            "vatt_models/vatt_gemma_T_final.ckpt",
            source=VATT_MODELS,
            licence=VATT_TERMS,
        ),
        *(
            WeightFile("llm", VATT_HOME, f"gemma_2b/{f}", source=GEMMA_BASE, licence=GEMMA_TERMS)
            for f in ("config.json", "tokenizer.model")
        ),
        WeightFile(
            "word_embeds",
            VATT_HOME,
            "gemma_2b/word_embeds.pth",
            source=GEMMA_BASE,
            licence=GEMMA_TERMS,
        ),
        WeightFile(
            "llm_delta",
            VATT_HOME,
            "checkpoint-231000/pytorch_model.bin",
            source=GEMMA_DELTA,
            licence=GEMMA_TERMS,
        ),
        *VATT_SHARED_FILES,
    ),
    "VATT-Gemma-T: gemma-2b converter + VATT Audio (MaskGIT over AudioGen Encodec tokens)",
)

# The structure of the golden VATT cases (vatt_eva02_small, vatt_converter_small,
# vatt_audio_small, vatt_e2e_tiny's Encodec) with random weights and a small locally made
# tokenizer: tests and the offline demo run every VATT code path.
TINY_VATT = _vatt(
    "tiny-vatt",
    VattConfig(
        image=Eva02Config(width=32, depth=1, heads=2),
        converter=dataclasses.replace(
            VATT_LLAMA_CONVERTER,
            vocab_size=256,
            hidden=64,
            layers=2,
            heads=4,
            kv_heads=4,
            head_dim=16,
            intermediate=176,
        ),
        audio=VattAudioConfig(
            latent_dim=16,
            num_tokens=272,
            dim=64,
            num_layers=2,
            num_heads=2,
            dec_num_layers=2,
            dec_num_heads=2,
            encoder_dim=64,
        ),
        encodec=EncodecConfig(dimension=16, n_filters=2, bins=272),
    ),
    (),
    "tiny random weights, VATT-LLaMA structure (tests and demo; output is noise)",
    random_weights=True,
)

# VATT is not yet served by the pipeline, the CLI or the weights command (issue 22, phase 2
# registers these in VARIANTS); its networks, loaders and sampler are in runtime/models/vatt_*.py,
# runtime/models/eva02.py, runtime/models/encodec.py and runtime/maskgit.py.
VATT_VARIANTS: dict[str, Variant] = {v.name: v for v in (VATT_LLAMA, VATT_GEMMA, TINY_VATT)}

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        SELVA_SMALL_16K,
        _mmaudio("small_16k", SMALL, 20, "af93cde404179f58e3919ac085b8033b"),
        _mmaudio("small_44k", SMALL, 40, "babd74c884783d13701ea2820a5f5b6d"),
        _mmaudio("medium_44k", MEDIUM, 40, "5a56b6665e45a1e65ada534defa903d0"),
        _mmaudio("large_44k", LARGE, 40, "fed96c325a6785b85ce75ae1aafd2673"),
        _mmaudio("large_44k_v2", LARGE, 40, "01ad4464f049b2d7efdaa4c1a59b8dfe", v2=True),
        _mmaudiosep("small_16k", SMALL, 20),
        _mmaudiosep("small_44k", SMALL, 40),
        _mmaudiosep("medium_44k", MEDIUM, 40),
        _mmaudiosep("large_44k", LARGE, 40),
        TINY,
        FLOWLEY,
        TINY_FLOWLEY,
        TINY_SEP,
    )
}


def generating_variants() -> list[str]:
    """The variants `selva-rt generate` (and batch, serve) run: all but the separating ones."""
    return [name for name, v in VARIANTS.items() if not v.separation]


def separating_variants() -> list[str]:
    """The variants `selva-rt separate` runs (MMAudioSep)."""
    return [name for name, v in VARIANTS.items() if v.separation]


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UsageError(
            f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}"
        ) from None
