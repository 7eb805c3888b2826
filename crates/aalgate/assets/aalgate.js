// aalgate's ceremony script: enrollment, sign-in, step-up and re-authentication with WebAuthn.
// Served from the gateway itself; no external code. The page's <main> carries what to do.
(function () {
  'use strict';
  const main = document.querySelector('main');
  // A refusal's "Go back" (an auth origin with no app of its own): nothing else to run.
  if (main.dataset.back) {
    const back = document.querySelector('button[data-action="back"]');
    if (back) back.addEventListener('click', () => window.history.back());
    return;
  }
  // Signed out here; the identity provider's own sign-out comes next (RP-initiated logout).
  if (main.dataset.next) {
    window.location.assign(main.dataset.next);
    return;
  }
  const status = document.getElementById('status');
  const csrf = main.dataset.csrf;
  // The popup a script call opened for its ceremony: done, so it closes and the script retries.
  if (main.dataset.close && window.opener) {
    window.close();
    return;
  }

  function dec(s) {
    s = s.replace(/-/g, '+').replace(/_/g, '/');
    while (s.length % 4) s += '=';
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  }
  function enc(buf) {
    const b = new Uint8Array(buf);
    let s = '';
    for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function say(text, kind) {
    status.textContent = text;
    status.className = kind || '';
  }
  function busy(on) {
    document.querySelectorAll('button').forEach((b) => { b.disabled = on; });
  }
  async function post(path, body) {
    const r = await fetch(path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json', 'x-aalgate-csrf': csrf },
      body: JSON.stringify(body),
    });
    let j = {};
    try { j = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) {
      const err = new Error(j.message || 'The sign-in service did not accept this request.');
      err.server = true;
      err.status = r.status;
      err.code = j.error;
      throw err;
    }
    return j;
  }
  function creationOptions(o) {
    const pk = o.publicKey;
    pk.challenge = dec(pk.challenge);
    pk.user.id = dec(pk.user.id);
    (pk.excludeCredentials || []).forEach((c) => { c.id = dec(c.id); });
    return { publicKey: pk };
  }
  function requestOptions(o) {
    const pk = o.publicKey;
    pk.challenge = dec(pk.challenge);
    (pk.allowCredentials || []).forEach((c) => { c.id = dec(c.id); });
    return { publicKey: pk };
  }
  function registrationJSON(c) {
    return {
      id: c.id, rawId: enc(c.rawId), type: c.type,
      response: {
        attestationObject: enc(c.response.attestationObject),
        clientDataJSON: enc(c.response.clientDataJSON),
        transports: c.response.getTransports ? c.response.getTransports() : [],
      },
      extensions: {},
    };
  }
  function assertionJSON(c) {
    return {
      id: c.id, rawId: enc(c.rawId), type: c.type,
      response: {
        authenticatorData: enc(c.response.authenticatorData),
        clientDataJSON: enc(c.response.clientDataJSON),
        signature: enc(c.response.signature),
        userHandle: c.response.userHandle ? enc(c.response.userHandle) : null,
      },
      extensions: {},
    };
  }
  function explain(e) {
    if (e && e.server) return e.message;
    if (e && e.name === 'NotAllowedError') {
      return 'Not confirmed: the request was cancelled, timed out, or your fingerprint, face or PIN was not verified. Nothing was changed. Press the button to try again.';
    }
    if (e && e.name === 'InvalidStateError') {
      return 'This key or passkey is already registered. Use another one, or sign in with it.';
    }
    return 'Your browser could not use a passkey or security key here. Try again, or ask IT for help.';
  }

  // The sign-in service failed (503): what became of the form, from the page (the service
  // that would know is the one that failed), and the pressed button becomes "Try again",
  // which runs the ceremony again; the form itself is never sent twice.
  function unavailable(e, button) {
    let text = e.message;
    // The store failed (the audit log's own message says what became of the form).
    if (e.code !== 'store_unavailable') {
      // nothing to add
    } else if (main.dataset.kept) {
      text += ` Your form for ${main.dataset.kept} is still kept, and is sent once you are signed in.`;
    } else if (main.dataset.notKept) {
      text += ' Your form could not be kept: submit it again once you are signed in.';
    }
    if (button) button.textContent = 'Try again';
    return text;
  }

  async function run(start, button) {
    busy(true);
    say('Follow your browser: touch your security key, or use your fingerprint, face or device PIN.');
    try {
      const begun = await post('/.aalgate/webauthn/start', start);
      let response;
      if (start.purpose === 'enroll') {
        const c = await navigator.credentials.create(creationOptions(begun.options));
        response = registrationJSON(c);
      } else {
        const c = await navigator.credentials.get(requestOptions(begun.options));
        response = assertionJSON(c);
      }
      const done = await post('/.aalgate/webauthn/finish', { ceremony: begun.ceremony, response: response });
      say('Done. Taking you back…', 'ok');
      window.location.assign(done.redirect);
    } catch (e) {
      say(e && e.status === 503 ? unavailable(e, button) : explain(e), 'error');
      busy(false);
      if (button) button.focus();
    }
  }

  if (!window.PublicKeyCredential) {
    say('This browser cannot use passkeys or security keys. Use an up-to-date browser, or ask IT.', 'error');
    return;
  }
  document.querySelectorAll('button[data-action]').forEach((b) => {
    b.addEventListener('click', (ev) => {
      ev.preventDefault();
      const a = b.dataset.action;
      if (a === 'enroll-passkey' || a === 'enroll-key') {
        run({ purpose: 'enroll', invite: main.dataset.invite, flow: main.dataset.flow, kind: a === 'enroll-passkey' ? 'passkey' : 'security_key' }, b);
      } else if (a === 'signin') {
        run({ purpose: 'signin', flow: main.dataset.flow }, b);
      } else if (a === 'switch') {
        run({ purpose: 'signin', flow: main.dataset.flow, switch: true }, b);
      } else if (a === 'username') {
        const u = document.getElementById('username').value.trim();
        if (!u) { say('Enter your user name first.', 'error'); document.getElementById('username').focus(); return; }
        run({ purpose: 'signin', flow: main.dataset.flow, username: u, switch: true }, b);
      }
    });
  });
  // Enter in the user-name field does what its button does (it is no form: no submit).
  const field = document.getElementById('username');
  const go = document.querySelector('button[data-action="username"]');
  if (field && go) {
    field.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { ev.preventDefault(); go.click(); }
    });
  }
  const first = document.querySelector('button[data-action]');
  if (first) first.focus();
})();
