// ddpmlab report: the sliders. Every frame and read-out is precomputed in the JSON blob; a
// scrubber shows frame k of its PNGs, writes the k-th value of each read-out and sets the k-th
// value of each SVG attribute (the marker on the schedule curve).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const scrubbers = data.scrubbers || {};

  function show(name, k) {
    const s = scrubbers[name];
    k = Math.max(0, Math.min(s.frames.length - 1, k | 0));
    document.getElementById(s.image).src = s.frames[k];
    for (const [id, values] of Object.entries(s.fields || {})) {
      document.getElementById(id).textContent = values[k];
    }
    for (const [id, attrs] of Object.entries(s.attrs || {})) {
      const el = document.getElementById(id);
      for (const [attr, values] of Object.entries(attrs)) el.setAttribute(attr, values[k]);
    }
  }

  for (const input of document.querySelectorAll("input.scrub")) {
    const name = input.dataset.scrubber;
    const s = scrubbers[name];
    if (!s) continue;
    input.max = String(s.frames.length - 1);
    input.addEventListener("input", () => show(name, Number(input.value)));
    for (const src of s.frames) { const im = new Image(); im.src = src; }  // preload
    show(name, Number(input.value));
  }

  for (const button of document.querySelectorAll("button.play")) {
    const name = button.dataset.scrubber;
    const input = document.querySelector('input.scrub[data-scrubber="' + name + '"]');
    let timer = null;
    const stop = () => { clearInterval(timer); timer = null; button.textContent = button.dataset.play; };
    button.addEventListener("click", () => {
      if (timer !== null) { stop(); return; }
      if (Number(input.value) >= Number(input.max)) input.value = "0";
      button.textContent = button.dataset.pause;
      timer = setInterval(() => {
        const k = Number(input.value) + 1;
        if (k > Number(input.max)) { stop(); return; }
        input.value = String(k);
        show(name, k);
      }, 120);
    });
  }
})();
