// The editor's panel for `selva-rt serve`: plain JavaScript, no build step, nothing fetched but
// the server's own API (render nodes and edit suites are often offline).
//
// Every request goes through `api`, which sends the token (when the server wants one) as a
// bearer header; so media is fetched as blobs, not by URL, since <video src> and <a href> cannot
// carry that header. The player's clock is the Web Audio context: each stem is a decoded buffer
// started at the same instant, and the picture follows it (corrected when it drifts), so stems
// stay sample-aligned with each other and frame-close to the picture.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
const HISTORY_PAGE = 20;
const state = {
  token: sessionStorage.getItem("selva-rt token") || "",
  file: null, // an upload chosen or dropped
  job: null, // the job being followed or shown
  polling: null,
  historyOffset: 0,
  player: null,
};

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(`the server cannot be reached (${err.message})`);
  }
  if (response.status === 401) {
    askToken();
    throw new ApiError("this server needs its access token");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new ApiError(message);
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function guarded(action) {
  try {
    showError("");
    await action();
  } catch (err) {
    showError(err instanceof ApiError ? err.message : `panel error: ${err.message}`);
  }
}

// -- connection and token ----------------------------------------------------------------------

function askToken() {
  $("token-form").hidden = false;
  $("token").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("selva-rt token", state.token);
  $("token-form").hidden = true;
  connect();
});

async function connect() {
  await guarded(async () => {
    const info = await json("/v1/info");
    const workers = info.workers.length > 1 ? `, ${info.workers.length} workers` : "";
    $("server").textContent = `${info.variant} on ${info.device} (${info.precision})${workers}`;
    $("server").dataset.variant = info.variant;
    await loadClips();
    await loadHistory(true);
  });
}

// -- the clip ----------------------------------------------------------------------------------

async function loadClips() {
  const { clips } = await json("/v1/clips");
  const select = $("clip-select");
  select.length = 1;
  for (const clip of clips) select.add(new Option(clip.name, clip.path));
}

function chooseFile(file) {
  state.file = file || null;
  if (file) $("clip-select").value = "";
  const size = file && (file.size < 1e6 ? `${Math.ceil(file.size / 1e3)} kB` : `${(file.size / 1e6).toFixed(1)} MB`);
  $("clip-chosen").textContent = file ? `upload: ${file.name} (${size})` : "";
}

$("clip-file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
$("clip-select").addEventListener("change", (e) => {
  if (e.target.value) {
    state.file = null;
    $("clip-file").value = "";
    $("clip-chosen").textContent = `clip: ${e.target.selectedOptions[0].text}`;
  } else {
    $("clip-chosen").textContent = "";
  }
});
const drop = $("drop");
for (const kind of ["dragenter", "dragover"]) {
  drop.addEventListener(kind, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
});

// -- prompts -----------------------------------------------------------------------------------

function addPrompt(text = "") {
  const list = $("prompts");
  const item = document.createElement("li");
  const input = document.createElement("input");
  const label = document.createElement("label");
  const remove = document.createElement("button");
  input.type = "text";
  input.className = "prompt";
  input.maxLength = 1000;
  input.value = text;
  input.placeholder = "e.g. dog barking";
  remove.type = "button";
  remove.textContent = "Remove";
  remove.addEventListener("click", () => {
    item.remove();
    if (!list.children.length) addPrompt();
    numberPrompts();
    list.querySelector("input").focus();
  });
  item.append(label, input, remove);
  list.append(item);
  numberPrompts();
  return input;
}

function numberPrompts() {
  [...$("prompts").children].forEach((item, i) => {
    const id = `prompt-${i + 1}`;
    item.querySelector("input").id = id;
    item.querySelector("label").htmlFor = id;
    item.querySelector("label").textContent = `Stem ${i + 1}`;
    item.querySelector("button").setAttribute("aria-label", `Remove stem ${i + 1}`);
  });
}

$("add-prompt").addEventListener("click", () => addPrompt().focus());

// -- submit, follow, cancel --------------------------------------------------------------------

function number(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

function jobFields() {
  const job = {
    prompts: [...document.querySelectorAll("#prompts input")].map((i) => i.value.trim()).filter(Boolean),
    negative_prompt: $("negative").value.trim(),
    seed: number("seed"),
    steps: number("steps"),
    cfg: number("cfg"),
    start: number("start"),
    duration: number("duration"),
    format: $("format").value,
    sample_rate: $("rate").value ? Number($("rate").value) : null,
    loudness: number("loudness"),
    otio: $("otio").checked,
    no_video: $("no-video").checked,
  };
  // Left empty: the server's defaults (and its own one-line message for what it refuses).
  for (const key of Object.keys(job)) if (job[key] === undefined) delete job[key];
  return job;
}

$("job-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    const job = jobFields();
    let request;
    if (state.file) {
      const form = new FormData();
      form.append("job", JSON.stringify(job));
      form.append("clip", state.file, state.file.name);
      request = { method: "POST", body: form };
    } else {
      const clip = $("clip-select").value;
      if (!clip) throw new ApiError("choose a clip on the server or upload one");
      request = {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...job, clip }),
      };
    }
    $("submit").disabled = true;
    try {
      const { id } = await json("/v1/jobs", request);
      follow(id);
    } finally {
      $("submit").disabled = false;
    }
  });
});

$("cancel").addEventListener("click", () => guarded(async () => {
  if (!state.job) return;
  const answer = await json(`/v1/jobs/${state.job.id}`, { method: "DELETE" });
  $("stage").textContent = answer.state;
}));

const STAGES = {
  queued: "queued",
  preparing: "reading the clip",
  sampling: "generating",
  finishing: "decoding, writing files",
  done: "done",
  failed: "failed",
  cancelled: "cancelled",
};

function follow(id) {
  clearTimeout(state.polling);
  stopPlayer();
  $("player").hidden = true;
  const tick = () => guarded(async () => {
    const job = await json(`/v1/jobs/${id}`);
    state.job = job;
    $("progress").value = job.progress;
    $("progress").dataset.state = job.state;
    $("stage").textContent = `${STAGES[job.stage] || job.stage} ${Math.round(job.progress * 100)}%`;
    const live = job.state === "queued" || job.state === "running";
    $("cancel").disabled = !live;
    if (live) {
      state.polling = setTimeout(tick, POLL_MS);
      return;
    }
    await loadHistory(true);
    if (job.state === "failed") throw new ApiError(job.error);
    if (job.state === "done") await showResult(job);
  });
  tick();
}

// -- the player --------------------------------------------------------------------------------

async function blobOf(job, name) {
  return (await api(`/v1/jobs/${job.id}/files/${encodeURIComponent(name)}`)).blob();
}

async function showResult(job) {
  stopPlayer();
  const context = new AudioContext();
  const stems = await Promise.all(job.outputs.map(async (output) => {
    const data = await (await blobOf(job, output.audio)).arrayBuffer();
    return { output, buffer: await context.decodeAudioData(data), muted: false, solo: false };
  }));
  const player = {
    job, context, stems, playing: false, position: 0, began: 0, sources: [],
    offset: job.job.start || 0, // where the stems start in the picture
    length: Math.max(...stems.map((s) => s.buffer.duration)),
  };
  for (const stem of stems) {
    stem.gain = context.createGain();
    stem.gain.connect(context.destination);
  }
  state.player = player;
  const video = $("picture");
  const withVideo = job.outputs.find((o) => o.video);
  video.hidden = !withVideo;
  if (withVideo) {
    video.src = URL.createObjectURL(await blobOf(job, withVideo.video));
    video.currentTime = player.offset;
  }
  $("seek").max = player.length.toFixed(2);
  $("seek").value = 0;
  renderStems(player);
  renderDownloads(job);
  $("player").hidden = false;
  updateClock();
}

function stopPlayer() {
  const player = state.player;
  if (!player) return;
  pause();
  player.context.close();
  const video = $("picture");
  if (video.src) URL.revokeObjectURL(video.src);
  video.removeAttribute("src");
  state.player = null;
}

function renderStems(player) {
  const list = $("stems");
  list.replaceChildren();
  player.stems.forEach((stem, i) => {
    const item = document.createElement("li");
    item.className = "stem";
    item.dataset.duration = stem.buffer.duration.toFixed(3);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = stem.output.prompt;
    const buttons = document.createElement("span");
    buttons.className = "buttons";
    for (const [flag, title] of [["muted", "Mute"], ["solo", "Solo"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = title.toLowerCase();
      button.textContent = title[0];
      button.title = title;
      button.setAttribute("aria-label", `${title} ${stem.output.prompt}`);
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", () => {
        stem[flag] = !stem[flag];
        button.setAttribute("aria-pressed", String(stem[flag]));
        applyGains(player);
      });
      buttons.append(button);
    }
    const canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `Waveform of ${stem.output.prompt}`);
    const level = document.createElement("span");
    level.className = "level";
    const lufs = stem.output.loudness && stem.output.loudness.integrated_lufs;
    level.textContent = `${stem.output.audio} · ${(stem.output.sample_rate || stem.buffer.sampleRate) / 1000} kHz`
      + (lufs == null ? "" : ` · ${lufs} LUFS`);
    item.append(name, buttons, canvas, level);
    list.append(item);
    stem.item = item;
    drawWave(canvas, stem.buffer);
  });
  applyGains(player);
}

function drawWave(canvas, buffer) {
  const width = (canvas.width = Math.max(200, canvas.clientWidth * devicePixelRatio));
  const height = (canvas.height = 48 * devicePixelRatio);
  const g = canvas.getContext("2d");
  const data = buffer.getChannelData(0);
  const per = Math.max(1, Math.floor(data.length / width));
  let peak = 1e-9;
  for (let i = 0; i < data.length; i++) peak = Math.max(peak, Math.abs(data[i]));
  g.fillStyle = getComputedStyle(document.documentElement).getPropertyValue("--wave");
  for (let x = 0; x < width; x++) {
    let lo = 0, hi = 0;
    for (let i = x * per; i < Math.min(data.length, (x + 1) * per); i++) {
      lo = Math.min(lo, data[i]);
      hi = Math.max(hi, data[i]);
    }
    const top = (0.5 - (hi / peak) * 0.48) * height;
    g.fillRect(x, top, 1, Math.max(1, ((hi - lo) / peak) * 0.48 * height));
  }
}

function applyGains(player) {
  const soloing = player.stems.some((s) => s.solo);
  for (const stem of player.stems) {
    const gain = (soloing ? stem.solo : !stem.muted) ? 1 : 0;
    stem.gain.gain.setValueAtTime(gain, player.context.currentTime);
    stem.item.dataset.gain = String(gain);
  }
}

function renderDownloads(job) {
  const box = $("downloads");
  box.replaceChildren();
  const files = [];
  for (const o of job.outputs) {
    files.push([o.audio, `Stem: ${o.prompt}`]);
    if (o.video) files.push([o.video, `Video: ${o.prompt}`]);
  }
  if (job.timeline) files.push([job.timeline, "Timeline (.otio)"]);
  for (const [name, text] of files) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "download";
    button.textContent = `⤓ ${text}`;
    button.setAttribute("aria-label", `Download ${name}`);
    button.dataset.file = name;
    button.addEventListener("click", () => guarded(async () => {
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await blobOf(job, name));
      link.download = name;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    }));
    box.append(button);
  }
}

function position() {
  const p = state.player;
  return p.playing ? p.position + (p.context.currentTime - p.began) : p.position;
}

async function play() {
  const p = state.player;
  if (!p || p.playing) return;
  await p.context.resume();
  if (p.position >= p.length) p.position = 0;
  p.began = p.context.currentTime + 0.05; // one shared start, a little ahead
  p.sources = p.stems.map((stem) => {
    const source = p.context.createBufferSource();
    source.buffer = stem.buffer;
    source.connect(stem.gain);
    source.start(p.began, Math.min(p.position, stem.buffer.duration));
    return source;
  });
  p.playing = true;
  const video = $("picture");
  if (!video.hidden) {
    video.currentTime = p.offset + p.position;
    video.play().catch(() => {}); // the picture follows; the stems are the clock
  }
  $("play").textContent = "Pause";
  $("play").setAttribute("aria-pressed", "true");
  $("player").dataset.playing = "true";
  requestAnimationFrame(updateClock);
}

function pause() {
  const p = state.player;
  if (!p || !p.playing) return;
  p.position = Math.min(position(), p.length);
  for (const source of p.sources) source.stop();
  p.sources = [];
  p.playing = false;
  $("picture").pause();
  $("play").textContent = "Play";
  $("play").setAttribute("aria-pressed", "false");
  $("player").dataset.playing = "false";
}

function seek(seconds) {
  const p = state.player;
  if (!p) return;
  const wasPlaying = p.playing;
  pause();
  p.position = Math.max(0, Math.min(seconds, p.length));
  $("picture").currentTime = p.offset + p.position;
  updateClock();
  if (wasPlaying) play();
}

function updateClock() {
  const p = state.player;
  if (!p) return;
  const now = Math.max(0, position());
  if (p.playing && now >= p.length) {
    pause();
    p.position = p.length;
  }
  $("seek").value = Math.min(now, p.length).toFixed(2);
  $("time").textContent = `${Math.min(now, p.length).toFixed(2)} s`;
  $("player").dataset.position = now.toFixed(3);
  const video = $("picture");
  if (p.playing && !video.hidden && Math.abs(video.currentTime - (p.offset + now)) > 0.1) {
    video.currentTime = p.offset + now; // the picture drifted from the stems' clock
  }
  if (p.playing) requestAnimationFrame(updateClock);
}

$("play").addEventListener("click", () => (state.player && state.player.playing ? pause() : play()));
$("seek").addEventListener("input", (e) => seek(Number(e.target.value)));
document.addEventListener("keydown", (e) => {
  // Space plays and pauses, as in every editor, unless a field or a button has the key.
  const typing = e.target.closest("input, select, textarea, button, summary");
  if (e.code === "Space" && !typing && state.player) {
    e.preventDefault();
    $("play").click();
  }
});

// -- history -----------------------------------------------------------------------------------

async function loadHistory(fresh) {
  if (fresh) state.historyOffset = 0;
  const page = await json(`/v1/jobs?limit=${HISTORY_PAGE}&offset=${state.historyOffset}`);
  const body = $("history").tBodies[0];
  if (fresh) body.replaceChildren();
  for (const job of page.jobs) {
    const row = body.insertRow();
    row.dataset.id = job.id;
    const when = new Date(job.created);
    row.insertCell().textContent = when.toLocaleString();
    row.insertCell().textContent = (job.job.name || job.job.clip.split("/").pop());
    row.insertCell().textContent = job.job.prompts.join(", ");
    const cell = row.insertCell();
    cell.textContent = job.state;
    cell.className = `state-${job.state}`;
    if (job.error) cell.title = job.error;
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = "Open";
    open.setAttribute("aria-label", `Open the job of ${when.toLocaleTimeString()}: ${job.job.prompts.join(", ")}`);
    open.addEventListener("click", () => follow(job.id));
    row.insertCell().append(open);
  }
  state.historyOffset += page.jobs.length;
  $("more").hidden = page.next_offset === null;
}

$("more").addEventListener("click", () => guarded(() => loadHistory(false)));

addPrompt();
connect();
