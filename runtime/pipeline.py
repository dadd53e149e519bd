"""`Pipeline`: load a variant once, keep it warm, turn a clip plus prompts into audio stems.

    pipe = Pipeline.from_pretrained("selva-small-16k", device="cpu")
    result = pipe.generate("clip.mp4", ["dog barking", "car horn"], seed=42)
    result.audio  # [P, samples] float32, one stem per prompt, at result.sample_rate

The pipeline reads the request's input window by window and hands it to the variant's model
family (runtime/families), which owns text, conditions, sampler and decoder; so this file knows
neither the model nor the backend. A clip longer than the family's trained window (8 s; VATT
10 s) becomes overlapping windows of its own frames, as the family plans them (runtime/
windows.py); up to it, one window, as the official code runs it. Separation reads the mixture
over the same windows. With a feature cache (runtime/cache.py), each window's features and each
prompt's text features are looked up by content before the family computes them: a second
prompt over a clip skips the video trunk.
"""

import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import media
from .backends import Progress
from .cache import Entry, FeatureCache, file_digest, tensor_digest
from .checks import check_negative_prompt, check_options, check_prompts
from .errors import MediaError, SelvaError
from .families import Family, load_family, needs
from .families.family import Run
from .memory import PeakMeter
from .variants import DEFAULT_SEED, Variant, get_variant
from .windows import Layout


@dataclass
class Synthesis:
    """What one request computed: noise x0 and sampler output x1 (a flow family's normalised
    latent [P, total, E]), audio [P, samples] (not yet cut to the picture), the family's
    named intermediate results (`trace`: sync_features, mel, mixture_latent, ...) and the
    sampler's conditions (a benchmark times single steps on them)."""

    noise: torch.Tensor
    latent: torch.Tensor
    audio: torch.Tensor
    trace: dict[str, torch.Tensor]
    conditions: dict = field(default_factory=dict)


@dataclass
class GenerationResult:
    audio: np.ndarray  # [P, samples] float32 in [-1, 1], one stem per prompt
    sample_rate: int
    prompts: list[str]
    duration: float  # seconds of picture the audio follows (shorter clips give shorter audio)
    start: float
    seed: int
    steps: int
    cfg: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part
    variant: str = ""  # the model that made it, named in the stems' metadata


class Pipeline:
    """A loaded variant on one device and precision, kept warm; `generate` (or, for separation
    variants, `separate`) is the one call."""

    def __init__(self, family: Family, cache: FeatureCache | None = None):
        self.family, self.cache = family, cache
        self.meter: PeakMeter | None = None  # set by a benchmark: peak memory per part
        self.variant, self.parts = family.variant, family.parts
        self.device, self.dtype, self.precision = family.device, family.dtype, family.precision

    @classmethod
    def from_pretrained(
        cls,
        variant: str = "selva-small-16k",
        device: str = "auto",
        precision: str = "auto",
        *,
        backend: str = "torch",
        engines: str | Path | None = None,
        reference: bool = False,
        cuda_graphs: bool | None = None,
        quiet: bool = True,
        checkpoint: str | Path | None = None,
        graph_parts: str | tuple[str, ...] | None = None,
        cache: FeatureCache | None = None,
        low_memory: bool = False,
    ) -> "Pipeline":
        """Load `variant` from the local weights folder ($SELVA_RT_HOME; `selva-rt weights
        download VARIANT` fetches the files; random-weight variants need none), on `backend`
        (see `backends.load_parts`: torch, or onnxruntime/tensorrt from the `engines` folder
        that `selva-rt export` built). `checkpoint`: a generator file instead of the variant's
        (how an MMAudioSep checkpoint, which no hub publishes yet, can be used from anywhere).
        `graph_parts`: parts the torch backend takes from the `engines` graphs instead.
        `cache`: where features are looked up and kept (`FeatureCache.open()`; None: none).
        `low_memory`: only the running stage's weights in memory (torch backend)."""
        family = load_family(
            get_variant(variant),
            backend,
            device=device,
            precision=precision,
            reference=reference,
            cuda_graphs=cuda_graphs,
            engines=engines,
            quiet=quiet,
            checkpoint=checkpoint,
            graph_parts=graph_parts,
            low_memory=low_memory,
        )
        return cls(family, cache)

    def generate(
        self,
        clip: "str | Path | media.Edit | media.Video",
        prompts: str | Sequence[str],
        *,
        negative_prompt: str = "",
        seed: int = DEFAULT_SEED,
        steps: int | None = None,
        cfg: float | None = None,
        duration: float | None = None,
        start: float = 0.0,
        progress: "bool | Progress" = False,
    ) -> GenerationResult:
        """One stem per prompt for `clip`, from `start` for `duration` seconds (None: to the
        clip's end; beyond the family's trained window in overlapping windows, as it plans
        them), with `steps` and guidance `cfg` (None: the variant's: 25 and 4.5; Flowley cfg
        7.5; VATT's MaskGIT 16 steps, cfg 5). The stem covers the picture to the end of its last
        frame (the official frame-count rule can stop short of it). `clip` may be a
        `media.Edit` (source ranges of several clips as one picture), or the Video of its first
        window that `media.decode_video` made ahead (a batch decodes the next clips while this one
        generates); its start is then the Video's own. Bad values raise a SelvaError with the
        one-line message the CLI prints. `progress`: True for progress bars on a terminal, or a
        function told of every finished sampling step (it may raise to stop the generation)."""
        prompts, negative_prompt, steps, cfg = self._checked(
            prompts, negative_prompt, seed, steps, cfg, duration, start, mixture=False
        )
        timings: dict[str, float] = {}
        run = Run(
            self.device, torch.Generator(self.device).manual_seed(seed), timings, meter=self.meter
        )
        key = self._picture_key(clip, start, duration, run)
        seen = None if key is None else self._seen_picture(key, run)
        if seen is not None:
            layout, first, inputs = seen
        else:
            with run.timed("decode"):
                video = clip
                if not isinstance(video, media.Video):
                    video = self._first_window(clip, start, duration, progress is True)
                layout, windows = self._picture(video, duration, progress is True)
            first = video.start
            inputs = _timed(run, "decode", (w.model_inputs() for w in windows))
        out = self._synthesize(inputs, prompts, negative_prompt, layout, steps, cfg, progress, run)
        if key is not None and seen is None:
            with run.timed("cache"):
                self.cache.store(self._picture_record(key, layout, first, run.windows))
        return self._result(out.audio, layout.duration, first, prompts, seed, steps, cfg, run)

    def separate(
        self,
        source: str | Path,
        prompts: str | Sequence[str],
        *,
        mixture: str | Path | None = None,
        video: bool = True,
        negative_prompt: str = "",
        seed: int = DEFAULT_SEED,
        steps: int | None = None,
        cfg: float | None = None,
        duration: float | None = None,
        start: float = 0.0,
        progress: bool = False,
        normalize_mixture_latent: bool = False,
    ) -> GenerationResult:
        """Separation variants (MMAudioSep): one stem per prompt, each the prompt's sound pulled
        out of the mixture. `source` is a clip (its audio is the mixture, its picture the visual
        query; `video=False` drops the picture) or an audio file (a query by text alone);
        `mixture` takes the mixture from another file. The whole input from `start` (or
        `duration` seconds of it) is separated, in windows beyond 8 s like `generate`.

        The mixture is downmixed to mono and resampled to the variant's rate (`media.read_audio`),
        zero-padded where shorter than the picture (the official demo asserts instead) and the
        stems cut back to it. `normalize_mixture_latent`: see `TorchParts.mixture_conditions`."""
        prompts, negative_prompt, steps, cfg = self._checked(
            prompts, negative_prompt, seed, steps, cfg, duration, start, mixture=True
        )
        timings: dict[str, float] = {}
        options = {"normalize_mixture_latent": normalize_mixture_latent}
        run = Run(self.device, torch.Generator(self.device).manual_seed(seed), timings, {}, options)
        run.meter = self.meter
        rate = self.family.sample_rate
        with run.timed("decode"):
            if video and media.has_video(source):
                first = self._first_window(source, start, duration, progress)
                layout, windows = self._picture(first, duration, progress)
                start, length = first.start, layout.duration
                wav = media.read_audio(mixture or source, rate, start, length)
            else:
                wav = media.read_audio(mixture or source, rate, start, duration or float("inf"))
                length = wav.shape[0] / rate
                if length <= 0:
                    raise MediaError(f"{Path(mixture or source).name} has no audio after {start} s")
                layout, windows = self.family.plan(length), None
        inputs = _timed(run, "decode", self._with_mixture(windows, wav, layout))
        out = self._synthesize(inputs, prompts, negative_prompt, layout, steps, cfg, progress, run)
        # The stem ends with the picture, or earlier with the mixture.
        length = min(length, wav.shape[0] / rate)
        return self._result(out.audio, length, start, prompts, seed, steps, cfg, run)

    @torch.inference_mode()
    def synthesize(
        self,
        inputs: Iterable[dict[str, torch.Tensor]],
        text,
        layout: Layout,
        *,
        seed: int = DEFAULT_SEED,
        steps: int | None = None,
        cfg: float | None = None,
        progress: "bool | Progress" = False,
        timings: dict[str, float] | None = None,
        options: dict | None = None,
    ) -> Synthesis:
        """Audio for the windows of `layout` from each window's model inputs (see
        `Family.features`: `sync`, `clip`, `mixture`) and encoded prompts `text`
        (`family.encode_text`): tensors in, tensors out, no media. Each prompt gets the noise
        a single-prompt call with the same seed gets, so a stem does not depend on which prompts
        share the call."""
        cfg = self.variant.cfg if cfg is None else cfg
        steps = self.variant.steps if steps is None else steps
        gen = torch.Generator(self.device).manual_seed(seed)
        run = Run(self.device, gen, {} if timings is None else timings, {}, options or {})
        run.meter = self.meter
        return self._sample(inputs, text, layout, steps, cfg, progress, run)

    def _checked(self, prompts, negative_prompt, seed, steps, cfg, duration, start, mixture):
        """Checked (prompts, negative prompt, steps, cfg) of a request (steps and cfg None:
        the variant's); the family refuses a request of the wrong kind (a mixture to a
        generating model, or none to a separating one)."""
        prompts = check_prompts(prompts)
        negative_prompt = check_negative_prompt(negative_prompt, self.variant)
        cfg = self.variant.cfg if cfg is None else cfg
        steps = self.variant.steps if steps is None else steps
        check_options(steps=steps, cfg=cfg, seed=seed, duration=duration, start=start)
        self.family.check(mixture)
        return prompts, negative_prompt, steps, cfg

    def _first_window(self, clip, start: float, duration: float | None, progress: bool):
        return first_window(clip, self.variant, start, duration, progress)

    def _picture(
        self, first: "media.Video", duration: float | None, progress: bool
    ) -> tuple[Layout, Iterator["media.Video"]]:
        """The windows of the request's picture, from its decoded first window: that window
        alone, or (a longer clip, a longer request) overlapping windows, the first cut from it
        and the rest decoded in one pass as the model needs them."""
        plan = self.family.plan
        if not first.more or (duration is not None and duration <= first.duration):
            return plan(first.duration), iter([first])
        # Packets only, no decode: to the last frame's end, as first_window measures it.
        available = media.clip_duration(first.source, first.start, to_end=True)
        length = available if duration is None else min(duration, available)
        layout = plan(length)
        rest = media.decode_windows(
            first.source,
            [first.start + s for s in layout.starts[1:]],
            layout.window,
            progress=progress,
            **self.family.needs.picture,
        )
        return layout, itertools.chain([first.head(layout.window)], rest)

    def _picture_key(self, clip, start: float, duration: float | None, run: Run) -> dict | None:
        """What decides a clip file's windows before any decoding: the file's bytes, the time
        range and how the family decodes pictures (None: no picture record: no cache, nothing
        reusable, an edit or decoded Video, a file over `cache.WHOLE_FILE_BYTES`)."""
        if self.cache is None or self.family.identity is None:
            return None
        if not isinstance(clip, str | Path):
            return None
        with run.timed("cache"):
            digest = file_digest(Path(clip))
        if digest is None:
            return None
        picture = repr(sorted(self.family.needs.picture.items()))
        return {
            "file": digest,
            "start": start,
            "duration": duration,
            "picture": picture,
            "decoder": media.decoder_version(),
        }

    def _seen_picture(self, key: dict, run: Run) -> tuple[Layout, float, Iterator] | None:
        """(layout, picture start, each window's found features) of a request seen before,
        or None unless the record and every window's features are in the cache."""
        identity = self.family.identity
        with run.timed("cache"):
            record = self.cache.lookup("picture", identity, key, torch.device("cpu")).tensors
            if record is None:
                return None
            windows: dict[int, dict[str, str]] = {}
            for name, t in record.items():
                if name.startswith("window"):
                    i, _, part = name.removeprefix("window").partition(".")
                    windows.setdefault(int(i), {})[part] = bytes(t.tolist()).hex()
            found = []
            for i in range(len(windows)):
                entry = self.cache.lookup("window", identity, windows[i], self.device, count=False)
                if entry.tensors is None:  # evicted or damaged: the windows are decoded again
                    return None
                found.append(_Found(entry.tensors))
            for _ in found:
                self.cache.stats.count("window", True)
        layout = self.family.plan(record["duration"].item())
        return layout, record["start"].item(), iter(found)

    def _picture_record(self, key: dict, layout: Layout, start: float, windows: list) -> Entry:
        """The cache entry of a request's picture: the layout's length and the picture's start
        (float64: exact) and each window's content digests (sha256 bytes)."""
        tensors = {
            "duration": torch.tensor(layout.duration, dtype=torch.float64),
            "start": torch.tensor(start, dtype=torch.float64),
        }
        for i, content in enumerate(windows):
            for part, digest in content.items():
                tensors[f"window{i}.{part}"] = torch.tensor(
                    list(bytes.fromhex(digest)), dtype=torch.uint8
                )
        entry = self.cache.entry("picture", self.family.identity, key, torch.device("cpu"))
        entry.tensors = tensors
        return entry

    def _with_mixture(
        self, windows: Iterator["media.Video"] | None, wav: np.ndarray, layout: Layout
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Each window's model inputs with its slice of the mixture [1, S], S the samples of
        the window's latent (zero-padded past the mixture's end), on the latent grid."""
        per_frame = 2 * self.variant.audio.hop
        total = torch.zeros(layout.total * per_frame)
        n = min(total.shape[0], wav.shape[0])
        total[:n] = torch.from_numpy(wav[:n])
        for offset in layout.offsets:
            inputs = {} if windows is None else next(windows).model_inputs()
            s = offset * per_frame
            inputs["mixture"] = total[None, s : s + layout.latent * per_frame]
            yield inputs

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], negative_prompt: str = ""):
        """`family.encode_text`, each prompt's features taken from the cache when it has them."""
        family = self.family
        rows = [
            self._cached(
                "text",
                lambda p=p: {"prompt": p, "negative_prompt": negative_prompt},
                lambda p=p: family.encode_prompt(p, negative_prompt),
            )
            for p in prompts
        ]
        return family.join_text(rows)

    def _cached(self, kind: str, content, make, run: Run | None = None) -> dict:
        """make() (a family's named tensors), or what the cache holds for the same `content()`
        under the family's identity; seconds spent on the cache itself go to run's "cache"."""
        identity = None if self.cache is None else self.family.identity
        if identity is None:
            return make()
        timed = run.timed if run is not None else _untimed
        with timed("cache"):
            entry = self.cache.lookup(kind, identity, content(), self.device)
        if entry.tensors is None:
            entry.tensors = make()
            with timed("cache"):
                self.cache.store(entry)
        return entry.tensors

    @torch.inference_mode()
    def _synthesize(self, inputs, prompts, negative_prompt, layout, steps, cfg, progress, run):
        with run.timed("text"):
            text = self.encode_text(prompts, negative_prompt)
        return self._sample(inputs, text, layout, steps, cfg, progress, run)

    def _sample(self, inputs, text, layout, steps, cfg, progress, run) -> Synthesis:
        conditions, x0 = self._prepare(inputs, text, layout, run)
        x1, audio = self._denoise(x0, conditions, layout, steps, cfg, progress, run)
        return Synthesis(x0, x1, audio, run.trace, conditions)

    def _prepare(self, inputs, text, layout, run) -> tuple[dict, torch.Tensor]:
        """A request's conditions and noise x0: everything before the sampler."""
        features = self._features(inputs, text.prompts, run)
        conditions = self.family.conditions(text, features, layout, run)
        del features  # the windows' trunk tokens: the largest tensors of a long clip
        return conditions, self.family.noise(text.prompts, layout, run)

    def _features(self, inputs, prompts: int, run: Run) -> list[dict]:
        """Each window's features, from the cache when it has them (a window found through
        the picture record is already its features); each window's content digests go to
        `run.windows`."""

        def content(window: dict) -> dict[str, str]:
            digests = {name: tensor_digest(t) for name, t in window.items()}
            run.windows.append(digests)
            return digests

        return [
            window.features
            if isinstance(window, _Found)
            else self._cached(
                "window",
                lambda w=window: content(w),
                lambda w=window: self.family.features(w, prompts, run),
                run,
            )
            for window in inputs
        ]

    def _denoise(self, x0, conditions, layout, steps, cfg, progress, run):
        """(x1, audio) of x0's rows: the sampler, then the decoder."""
        family = self.family
        with run.timed("sampling"), _progress(steps, "sampling", progress) as bar:
            x1 = family.sample(x0, conditions, layout, steps, cfg, bar.update, run)
        with run.timed("decoder"):
            audio = family.decode(x1, layout, run)
        return x1, audio

    @torch.inference_mode()
    def generate_many(
        self,
        requests: Sequence["Request"],
        progress: "Callable[[int, int], None] | None" = None,
    ) -> "list[GenerationResult | SelvaError]":
        """`generate` for each request, in order (a request that `generate` would refuse gets
        its SelvaError in its place). Requests whose picture is one window of the same length,
        with the same steps and cfg, share each call of the sampler and the decoder: their
        rows go through the DiT and the decoder together (on a GPU, one batch instead of
        several), and each stem equals the one `generate` gives. `progress(i, steps)`: request
        i finished `steps` more sampling steps (it may raise to stop every request)."""
        results: list = [None] * len(requests)
        groups: dict[tuple, list[_Prepared]] = {}
        for i, req in enumerate(requests):
            try:
                item = self._prepared(i, req)
            except SelvaError as err:
                results[i] = err
                continue
            # A long clip's windows are already a batch of rows: it runs alone.
            joins = self.family.joins_requests and len(item.layout) == 1
            key = (item.layout.latent, item.steps, item.cfg) if joins else (i,)
            groups.setdefault(key, []).append(item)
        for group in groups.values():

            def tell(steps: int, group=group) -> None:
                if progress is not None:
                    for item in group:
                        progress(item.index, steps)

            # Conditions set the generator up for their length: made per group, before sampling.
            for item in group:
                item.conditions = self.family.conditions(
                    item.text, item.features, item.layout, item.run
                )
                item.features = None
                item.x0 = self.family.noise(item.text.prompts, item.layout, item.run)
            rows = [item.x0.shape[0] for item in group]
            x0 = torch.cat([item.x0 for item in group])
            conditions = self.family.join_conditions([item.conditions for item in group], rows)
            first = group[0]
            shared: dict[str, float] = {}  # each request waited for these calls: all count them
            run = Run(self.device, first.run.rng, shared, first.run.trace, meter=self.meter)
            _, audio = self._denoise(
                x0, conditions, first.layout, first.steps, first.cfg, tell, run
            )
            for item, part in zip(group, audio.split(rows), strict=True):
                item.run.timings.update(shared)
                results[item.index] = self._result(
                    part,
                    item.layout.duration,
                    item.start,
                    item.prompts,
                    item.seed,
                    item.steps,
                    item.cfg,
                    item.run,
                )
        return results

    def _prepared(self, index: int, req: "Request") -> "_Prepared":
        """A request decoded, its text encoded and its windows' features made."""
        prompts, negative, steps, cfg = self._checked(
            req.prompts,
            req.negative_prompt,
            req.seed,
            req.steps,
            req.cfg,
            req.duration,
            req.start,
            mixture=False,
        )
        run = Run(self.device, torch.Generator(self.device).manual_seed(req.seed), {})
        run.meter = self.meter
        with run.timed("decode"):
            video = req.clip
            if not isinstance(video, media.Video):
                video = self._first_window(video, req.start, req.duration, False)
            layout, windows = self._picture(video, req.duration, False)
        inputs = _timed(run, "decode", (w.model_inputs() for w in windows))
        with run.timed("text"):
            text = self.encode_text(prompts, negative)
        features = self._features(inputs, text.prompts, run)
        return _Prepared(
            index, run, layout, video.start, prompts, req.seed, steps, cfg, text, features
        )

    def _result(self, audio, duration, start, prompts, seed, steps, cfg, run) -> GenerationResult:
        # The model's audio overruns the picture (by up to one latent frame, spec §1.4; VATT's
        # by the rest of its 10 s window); a stem for an editor's timeline ends with the picture.
        rate = self.family.sample_rate
        return GenerationResult(
            audio=audio[:, : round(duration * rate)].float().cpu().numpy(),
            sample_rate=rate,
            prompts=prompts,
            duration=duration,
            start=start,
            seed=seed,
            steps=steps,
            cfg=cfg,
            timings=run.timings,
            variant=self.variant.name,
        )


@dataclass(frozen=True)
class Request:
    """One `generate` call's arguments, for `Pipeline.generate_many`."""

    clip: "str | Path | media.Video"
    prompts: Sequence[str]
    negative_prompt: str = ""
    seed: int = DEFAULT_SEED
    steps: int | None = None  # the variant's
    cfg: float | None = None
    duration: float | None = None
    start: float = 0.0


@dataclass
class _Prepared:
    """A request of `generate_many` up to its sampler."""

    index: int
    run: Run
    layout: Layout
    start: float
    prompts: list[str]
    seed: int
    steps: int
    cfg: float
    text: object  # the family's text features
    features: list[dict] | None
    conditions: dict | None = None
    x0: torch.Tensor | None = None


def first_window(
    clip: "str | Path | media.Edit",
    variant: Variant,
    start: float = 0.0,
    duration: float | None = None,
    progress: bool = False,
) -> "media.Video":
    """A request's first window of `clip`, up to the trained length, decoded once, as
    `variant`'s family needs its pictures; it tells whether the clip has more picture
    (`Video.more`). What a batch decodes ahead of the model (`Pipeline.generate` takes it).
    A clip that ends inside the window gives the exact time to its last frame's end
    (`decode_video(to_end=True)`), so the stem is as long as the picture."""
    wants = needs(variant)
    window = wants.window if duration is None else min(duration, wants.window)
    peek = duration is None or duration > wants.window  # only then can there be more windows
    return media.decode_video(
        clip,
        duration=window,
        start=start,
        progress=progress,
        peek=peek,
        to_end=True,
        **wants.picture,
    )


@dataclass
class _Found:
    """A window's features found through a picture record: nothing was decoded for it."""

    features: dict[str, torch.Tensor]


@contextmanager
def _untimed(name: str) -> Iterator[None]:
    yield


def _timed(run: Run, name: str, items: Iterator) -> Iterator:
    """`items`, each one's making timed under `name` (the windows' pictures are decoded as the
    model needs them, so a long clip's frames are never all held)."""
    while True:
        with run.timed(name):
            item = next(items, None)
        if item is None:
            return
        yield item


def _progress(total: int, desc: str, progress: "bool | Progress"):
    """A tqdm bar on a terminal when `progress` is True; a caller's function as the bar."""
    if callable(progress):
        return _Told(progress)
    return tqdm(total=total, desc=desc, disable=not (progress and sys.stderr.isatty()), leave=False)


class _Told:
    """The bar interface (`update`, context manager) over a function told of finished steps."""

    def __init__(self, tell: "Progress"):
        self.update = tell

    def __enter__(self) -> "_Told":
        return self

    def __exit__(self, *exc) -> None:
        return None
