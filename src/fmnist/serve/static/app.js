// fmnist web page: send an upload, the example or a drawing to /predict; show what the model saw and said.
"use strict";

const $ = (id) => document.getElementById(id);
// Below this top-1 probability the answer is flagged as a guess and the runner-up is named.
const UNSURE_BELOW = 0.5;
let hasGradcam = false;
let oodThreshold = null; // the run's unknown threshold (/model's calibration), shown beside a flagged image's score
let requestSeq = 0; // answers can arrive out of order; only the latest request may paint
let last = null;    // the latest input {blob, filename, source}, re-sent when Grad-CAM is switched on

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModel() {
  try {
    const info = await (await fetch("/model")).json();
    hasGradcam = info.gradcam;
    const acc = info.test_accuracy == null ? "" : ` · test accuracy ${(100 * info.test_accuracy).toFixed(2)}%`;
    const params = info.params == null ? "" : `, ${info.params.toLocaleString()} parameters`;
    $("model-line").textContent = `${info.name} (${info.family}${params}, ${info.backend})${acc}`;
    oodThreshold = info.calibration.ood_threshold;
    if (info.calibration.note) {
      $("calibration-note").textContent = `Note: ${info.calibration.note}.`;
      $("calibration-note").hidden = false;
    }
    $("cam-toggle").hidden = !hasGradcam;
    $("cam-note").hidden = hasGradcam;
    $("classes").replaceChildren(...info.class_names.map((name) => {
      const item = document.createElement("li");
      item.textContent = name;
      return item;
    }));
  } catch (err) {
    $("model-line").textContent = "model information unavailable";
  }
}

// Forget the shown answer: a new request, an error or Clear must never leave a stale one on screen.
function clearAnswer(state) {
  const result = $("result");
  result.dataset.state = state;
  delete result.dataset.confidence;
  $("answer-for").textContent = "";
  $("top-class").textContent = "–";
  delete $("top-class").dataset.label;
  $("top-prob").textContent = "";
  $("unsure").hidden = true;
  $("unsure").textContent = "";
  $("unknown").hidden = true;
  $("unknown").textContent = "";
  $("bars").replaceChildren();
  const input = $("input28").getContext("2d");
  input.fillStyle = "#000";
  input.fillRect(0, 0, 28, 28);
  $("cam28").getContext("2d").clearRect(0, 0, 28, 28);
  $("cam28").hidden = true;
  clearSaw("idle");
}

async function predict(blob, filename, source) {
  const seq = ++requestSeq;
  last = { blob, filename, source };
  clearAnswer("busy");
  setStatus(`classifying ${source}…`);
  const form = new FormData();
  form.append("file", blob, filename);
  const wantCam = hasGradcam && $("show-cam").checked;
  const query = `top_k=3&include_input=true&gradcam=${wantCam}`;
  let response, body;
  try {
    response = await fetch(`/predict?${query}`, { method: "POST", body: form });
    body = await response.json();
  } catch (err) {
    if (seq !== requestSeq) return;
    clearAnswer("error");
    setStatus(`${source}: request failed (${err})`, true);
    return;
  }
  if (seq !== requestSeq) return;
  if (!response.ok) {
    clearAnswer("error");
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    setStatus(`${source}: ${response.status} ${detail}`, true);
    return;
  }
  show(body, source);
  $("result").dataset.state = "done";
  setStatus("");
  explain(blob, filename, seq); // after the answer, so the answer is never kept waiting for the panel
}

// --- "What the model saw": /explain's input, Grad-CAM, OOD score and nearest training images ---------------

function clearSaw(state) {
  $("saw").dataset.state = state;
  $("saw").hidden = state === "idle";
  $("saw-status").textContent = "";
  for (const id of ["saw-input", "saw-cam"]) $(id).removeAttribute("src");
  $("saw-cam-figure").hidden = true;
  $("saw-cam-caption").textContent = "";
  $("saw-meter").hidden = true;
  $("saw-ood").textContent = "";
  $("saw-neighbours").replaceChildren();
  for (const id of ["saw-cam-absent", "saw-neighbours-absent"]) { $(id).hidden = true; $(id).textContent = ""; }
}

async function explain(blob, filename, seq) {
  clearSaw("busy");
  $("saw-status").textContent = "looking at what the model saw…";
  const form = new FormData();
  form.append("file", blob, filename);
  let response, body;
  try {
    response = await fetch("/explain", { method: "POST", body: form });
    body = await response.json();
  } catch (err) {
    if (seq !== requestSeq) return;
    clearSaw("error");
    $("saw-status").textContent = `The panel could not be loaded (${err}).`;
    return;
  }
  if (seq !== requestSeq) return;
  if (!response.ok) {
    clearSaw("error");
    $("saw-status").textContent = `The panel could not be loaded: ${response.status} ${body.detail}`;
    return;
  }
  showSaw(body);
  $("saw").dataset.state = "done";
  $("saw-status").textContent = "";
}

function absentLine(id, what, reason) {
  $(id).textContent = `No ${what}: ${reason}.`;
  $(id).hidden = false;
}

const fixed = (x) => x.toFixed(2);

function showSaw(saw) {
  $("saw-input").src = saw.input;
  if (saw.gradcam) {
    $("saw-cam").src = saw.gradcam.image;
    $("saw-cam-caption").textContent = `Grad-CAM for ${saw.gradcam.label}${saw.gradcam.flat ? " (flat: it shows no place)" : ""}`;
    $("saw-cam-figure").hidden = false;
  } else {
    absentLine("saw-cam-absent", "Grad-CAM", saw.absent.gradcam);
  }
  if (saw.ood) {
    const { score, threshold, unknown } = saw.ood;
    const verdict = unknown ? "unlike Fashion-MNIST (unknown)" : "like Fashion-MNIST";
    $("saw-ood").textContent = `OOD score ${fixed(score)} against the run's threshold ${fixed(threshold)} ` +
      `(higher is less like the training images): ${verdict}.`;
    drawMeter(score, threshold, unknown);
  } else {
    $("saw-ood").textContent = `No OOD score: ${saw.absent.ood}.`;
  }
  if (saw.neighbours) {
    $("saw-neighbours").replaceChildren(...saw.neighbours.map((n) => {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = n.image;
      img.alt = `Training image #${n.index}: ${n.label}`;
      const caption = document.createElement("figcaption");
      caption.textContent = `${n.label}\ntrain #${n.index}\ncosine ${n.cosine.toFixed(3)}`;
      figure.append(img, caption);
      return figure;
    }));
  } else {
    absentLine("saw-neighbours-absent", "neighbours", saw.absent.neighbours);
  }
}

// The score on a scale that holds it, the threshold (the mark) and 0: the fill turns red past the mark.
function drawMeter(score, threshold, unknown) {
  const low = Math.min(0, score, threshold), high = Math.max(score, threshold);
  const pad = 0.15 * (high - low || 1);
  const at = (x) => `${(100 * (x - low + pad)) / (high - low + 2 * pad)}%`;
  const meter = $("saw-meter");
  meter.querySelector(".fill").style.width = at(score);
  meter.querySelector(".mark").style.left = at(threshold);
  meter.classList.toggle("unknown", unknown);
  meter.hidden = false;
}

const percent = (p) => `${(100 * p).toFixed(1)}%`;

function show(result, source) {
  $("answer-for").textContent = source;
  if (result.unknown) { // above the run's threshold: the classes below (if not withheld) are likely wrong
    const threshold = oodThreshold == null ? "" : `, threshold ${oodThreshold.toFixed(1)}`;
    $("unknown").textContent = `unknown: this does not look like a Fashion-MNIST item (score ${result.ood_score.toFixed(1)}${threshold})`;
    $("unknown").hidden = false;
  }
  if (result.label == null) { // the server withholds the classes of unknown images (--ood reject)
    $("top-class").textContent = "unknown";
    drawInput(result.input);
    drawCam(result.gradcam);
    return;
  }
  $("top-class").textContent = result.label;
  $("top-class").dataset.label = result.label;
  $("top-prob").textContent = percent(result.probability);
  const unsure = result.probability < UNSURE_BELOW;
  $("result").dataset.confidence = unsure ? "low" : "high";
  if (unsure && result.top.length > 1) {
    const second = result.top[1];
    $("unsure").textContent = `Not sure: only ${percent(result.probability)}. Runner-up: ${second.label} (${percent(second.probability)}).`;
    $("unsure").hidden = false;
  }
  drawInput(result.input);
  drawCam(result.gradcam);
  const rows = Object.entries(result.probabilities).map(([label, p]) => {
    const row = document.createElement("div");
    row.className = "bar" + (label === result.label ? " top" : "");
    row.setAttribute("role", "listitem");
    const name = document.createElement("span");
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = percent(p);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p);
    row.append(name, track, value);
    return row;
  });
  $("bars").replaceChildren(...rows);
}

function drawInput(pixels) {
  const ctx = $("input28").getContext("2d");
  const image = ctx.createImageData(28, 28);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const v = pixels[y][x], i = 4 * (28 * y + x);
      image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
      image.data[i + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

// A blue-to-yellow-to-red ramp; opacity grows with heat so the garment shows through the cool parts.
function heatColour(t) {
  const r = Math.round(255 * Math.min(1, Math.max(0, 1.5 * t - 0.2)));
  const g = Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(2.4 * t - 1.3))));
  const b = Math.round(255 * Math.min(1, Math.max(0, 1 - 2 * t)));
  return [r, g, b, Math.round(200 * t)];
}

// The legend is painted opaque (a see-through low end would show nothing); the overlay with heatColour's opacity.
function paintHeat(ctx, width, height, valueAt, opaque = false) {
  const image = ctx.createImageData(width, height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = 4 * (width * y + x), [r, g, b, a] = heatColour(valueAt(x, y));
      image.data[i] = r; image.data[i + 1] = g; image.data[i + 2] = b; image.data[i + 3] = opaque ? 255 : a;
    }
  }
  ctx.putImageData(image, 0, 0);
}

function drawCam(heat) {
  const canvas = $("cam28");
  canvas.getContext("2d").clearRect(0, 0, 28, 28);
  canvas.hidden = !heat || !$("show-cam").checked;
  if (heat) paintHeat(canvas.getContext("2d"), 28, 28, (x, y) => heat[y][x]);
}

function setupCam() {
  const ramp = $("cam-ramp");
  paintHeat(ramp.getContext("2d"), ramp.width, ramp.height, (x) => x / (ramp.width - 1), true);
  $("show-cam").addEventListener("change", () => {
    const on = $("show-cam").checked;
    $("cam-legend").hidden = !on;
    // Maps are computed only when asked for: switching on re-sends the shown input with gradcam=true.
    if (on && last) predict(last.blob, last.filename, last.source);
    else $("cam28").hidden = !on;
  });
}

function setupUpload() {
  const drop = $("drop");
  const send = (file) => { if (file) predict(file, file.name, `Photo: ${file.name}`); };
  $("file").addEventListener("change", (event) => send(event.target.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    send(event.dataTransfer.files[0]);
  });
  $("example").addEventListener("click", async () => {
    try {
      const blob = await (await fetch("/example.png")).blob();
      predict(blob, "example.png", "Example: trousers (drawn by the server)");
    } catch (err) {
      setStatus(`example unavailable (${err})`, true);
    }
  });
}

function setupDrawing() {
  const canvas = $("draw");
  const ctx = canvas.getContext("2d");
  let drawing = false, dirty = false, lastPoint = null;
  const blank = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); dirty = false; };
  blank();
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true; lastPoint = point(event); canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const p = point(event);
    ctx.strokeStyle = "#fff"; ctx.lineWidth = Number($("brush").value); ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...lastPoint); ctx.lineTo(...p); ctx.stroke();
    lastPoint = p; dirty = true;
  });
  const finish = () => {
    if (!drawing) return;
    drawing = false;
    if (dirty) canvas.toBlob((blob) => predict(blob, "drawing.png", "Drawing"), "image/png");
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  $("clear").addEventListener("click", () => {
    requestSeq++; // an answer still on its way belongs to what was cleared
    last = null;
    blank();
    $("file").value = "";
    clearAnswer("idle");
    setStatus("");
  });
}

setupUpload();
setupDrawing();
setupCam();
clearAnswer("idle");
loadModel();
