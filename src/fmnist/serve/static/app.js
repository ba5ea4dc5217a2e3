// fmnist web page: send an upload or a drawing to /predict, show what the model saw and said.
"use strict";

const $ = (id) => document.getElementById(id);
let hasGradcam = false;
let requestSeq = 0; // answers can arrive out of order; only the latest request may paint

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModel() {
  try {
    const info = await (await fetch("/model")).json();
    hasGradcam = info.gradcam;
    const acc = info.test_accuracy == null ? "" : ` · test accuracy ${(100 * info.test_accuracy).toFixed(2)}%`;
    $("model-line").textContent = `${info.name} (${info.family}, ${info.params.toLocaleString()} parameters, ${info.backend})${acc}`;
    $("cam-toggle").hidden = !hasGradcam;
    $("cam-note").hidden = hasGradcam;
  } catch (err) {
    $("model-line").textContent = "model information unavailable";
  }
}

async function predict(blob, filename) {
  const seq = ++requestSeq;
  const form = new FormData();
  form.append("file", blob, filename);
  $("result").dataset.state = "busy";
  setStatus("classifying…");
  const query = `top_k=3&include_input=true&gradcam=${hasGradcam}`;
  let response, body;
  try {
    response = await fetch(`/predict?${query}`, { method: "POST", body: form });
    body = await response.json();
  } catch (err) {
    if (seq !== requestSeq) return;
    $("result").dataset.state = "error";
    setStatus(`request failed: ${err}`, true);
    return;
  }
  if (seq !== requestSeq) return;
  if (!response.ok) {
    $("result").dataset.state = "error";
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    setStatus(`${response.status}: ${detail}`, true);
    return;
  }
  show(body);
  $("result").dataset.state = "done";
  setStatus(`${filename}: ${body.label}`);
}

function show(result) {
  $("top-class").textContent = result.label;
  $("top-class").dataset.label = result.label;
  $("top-prob").textContent = `${(100 * result.probability).toFixed(1)}%`;
  drawInput(result.input);
  drawCam(result.gradcam);
  const bars = $("bars");
  bars.replaceChildren();
  for (const [label, p] of Object.entries(result.probabilities)) {
    const row = document.createElement("div");
    row.className = "bar" + (label === result.label ? " top" : "");
    row.setAttribute("role", "listitem");
    const name = document.createElement("span");
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * p).toFixed(1)}%`;
    row.append(name, track, value);
    bars.append(row);
  }
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

// A perceptual blue-to-yellow-to-red ramp; transparency grows with heat so the garment shows through.
function heatColour(t) {
  const r = Math.round(255 * Math.min(1, Math.max(0, 1.5 * t - 0.2)));
  const g = Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(2.4 * t - 1.3))));
  const b = Math.round(255 * Math.min(1, Math.max(0, 1 - 2 * t)));
  return [r, g, b];
}

function drawCam(heat) {
  const canvas = $("cam28");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, 28, 28);
  if (!heat) return;
  const image = ctx.createImageData(28, 28);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const t = heat[y][x], i = 4 * (28 * y + x), [r, g, b] = heatColour(t);
      image.data[i] = r; image.data[i + 1] = g; image.data[i + 2] = b;
      image.data[i + 3] = Math.round(200 * t);
    }
  }
  ctx.putImageData(image, 0, 0);
  canvas.style.display = $("show-cam").checked ? "block" : "none";
}

function setupUpload() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) predict(file, file.name);
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) predict(file, file.name);
  });
  $("show-cam").addEventListener("change", () => {
    $("cam28").style.display = $("show-cam").checked ? "block" : "none";
  });
}

function setupDrawing() {
  const canvas = $("draw");
  const ctx = canvas.getContext("2d");
  let drawing = false, dirty = false, last = null;
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); dirty = false; };
  clear();
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true; last = point(event); canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const p = point(event);
    ctx.strokeStyle = "#fff"; ctx.lineWidth = Number($("brush").value); ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(...p); ctx.stroke();
    last = p; dirty = true;
  });
  const finish = () => {
    if (!drawing) return;
    drawing = false;
    if (dirty) canvas.toBlob((blob) => predict(blob, "drawing.png"), "image/png");
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  $("clear").addEventListener("click", clear);
}

setupUpload();
setupDrawing();
loadModel();
