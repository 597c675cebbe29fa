// The start-up page: follows the environment's start over server-sent events
// (/_spawngate/api/me/progress) and continues to the address asked for the
// moment the app answers; on failure shows why, with a retry that respects
// spawngate's back-off. Without this script the page reloads itself instead.
(function () {
  'use strict';
  var root = document.getElementById('progress');
  if (!root) { return; }
  var next = root.getAttribute('data-next') || location.href;
  var order = ['queued', 'creating', 'waiting', 'ready'];
  var began = Date.now();
  var ticking = null;

  function el(id) { return document.getElementById(id); }
  function secs(ms) { return (ms / 1000).toFixed(1) + ' s'; }
  function go() { location.replace(next); }

  // Steps before `step` are done (with the time they were reached), `step` is
  // the current one.
  function mark(step, elapsedMs) {
    var at = order.indexOf(step === 'starting' ? 'creating' : step);
    if (at < 0) { return; }
    var items = root.querySelectorAll('.progress-steps li');
    for (var i = 0; i < items.length; i++) {
      var li = items[i];
      var time = li.querySelector('.progress-time');
      if (i < at || (i === at && step === 'ready')) {
        li.className = 'done';
      } else if (i === at) {
        if (li.className !== 'current' && time && elapsedMs != null) {
          time.textContent = 'at ' + secs(elapsedMs);
        }
        li.className = 'current';
      } else {
        li.className = '';
      }
      if (i === at && step === 'ready' && time && elapsedMs != null) {
        time.textContent = 'after ' + secs(elapsedMs);
      }
    }
  }

  function tick() {
    el('progress-elapsed').textContent = 'Elapsed: ' + secs(Date.now() - began);
  }

  // The retry link stays unusable until the back-off is over.
  function countdown(left) {
    var link = el('progress-retry');
    var note = el('progress-retry-note');
    function step() {
      if (left > 0) {
        link.classList.add('disabled');
        link.setAttribute('aria-disabled', 'true');
        note.textContent = 'Possible in ' + left + ' s.';
        left -= 1;
        setTimeout(step, 1000);
      } else {
        link.classList.remove('disabled');
        link.removeAttribute('aria-disabled');
        note.textContent = '';
      }
    }
    link.addEventListener('click', function (e) {
      e.preventDefault();
      if (!link.classList.contains('disabled')) { go(); }
    });
    step();
  }

  function fail(ev) {
    if (ticking) { clearInterval(ticking); }
    document.title = 'Your environment could not be started · spawngate';
    var h1 = document.querySelector('h1');
    if (h1) { h1.textContent = 'Your environment could not be started'; }
    el('progress-live').hidden = true;
    el('progress-failure').hidden = false;
    el('progress-reason').textContent = ev.message || 'The start failed.';
    var logs = ev.logs || [];
    el('progress-output').hidden = logs.length === 0;
    el('progress-logs').textContent = logs.join('\n');
    root.setAttribute('data-state', 'failed');
    countdown(ev.retry_in_secs || 0);
  }

  if (root.getAttribute('data-state') === 'failed') {
    countdown(parseInt(root.getAttribute('data-retry-in'), 10) || 0);
    return;
  }
  if (!window.EventSource) { setTimeout(go, 2000); return; }
  mark('queued', 0);
  tick();
  ticking = setInterval(tick, 200);
  var source = new EventSource(root.getAttribute('data-stream'));
  source.onmessage = function (m) {
    var ev;
    try { ev = JSON.parse(m.data); } catch (e) { return; }
    if (ev.elapsed_ms != null) { began = Date.now() - ev.elapsed_ms; tick(); }
    if (typeof ev.progress === 'number') { el('progress-bar').value = ev.progress; }
    if (ev.ready) {
      source.close();
      mark('ready', ev.elapsed_ms);
      el('progress-message').textContent = 'Ready. Opening it…';
      go();
    } else if (ev.failed) {
      source.close();
      fail(ev);
    } else if (ev.stopped) {
      // Not (or no longer) starting: asking again starts it.
      source.close();
      setTimeout(go, 1000);
    } else {
      el('progress-message').textContent = ev.message;
      mark(ev.step, ev.step_at_ms);
    }
  };
  source.onerror = function () {
    // While CONNECTING the browser retries by itself; CLOSED (an error answer,
    // say the session ended) falls back to asking forwardAuth again.
    if (source.readyState === EventSource.CLOSED) { setTimeout(go, 2000); }
  };
}());
