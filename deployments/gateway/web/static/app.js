// The reelflow upload page: a form around tus-js-client (window.tus, /static/vendor/tus.min.js)
// and the gateway's status API. Every request is same-origin and authenticated by the session
// cookie (HttpOnly): this script never holds the creator's token, except the moment a token
// pasted into the sign-in field is sent to POST /session.
//
// Resume: tus-js-client keeps each upload's URL in localStorage under the file's fingerprint
// (name, type, size, lastModified, endpoint). Picking the same file again after a reload or a
// lost connection finds it (findPreviousUploads), asks the server for its offset (HEAD) and
// continues from there.
'use strict'
;(function () {
  const config = JSON.parse(document.getElementById('config').textContent)
  const $ = (id) => document.getElementById(id)

  const STAGES = ['receiving', 'validating', 'scanning', 'storing', 'stored', 'publishing', 'published']
  const LABELS = {
    receiving: 'Uploading',
    validating: 'Checking the video',
    scanning: 'Scanning for malware',
    storing: 'Storing, making the thumbnail',
    stored: 'Stored',
    publishing: 'Posting to TikTok',
    published: 'Posted',
    failed: 'Failed',
    cancelled: 'Cancelled',
  }
  const FINAL = new Set(['published', 'failed', 'cancelled'])
  const RATE_WINDOW_MS = 5000
  const RETRY_DELAYS_MS = [0, 1000, 3000, 5000, 10000, 20000]
  const PAGE_SIZE = 10

  const state = {
    me: null,
    file: null,
    durationS: null,
    creator: null, // creator_info of the chosen account
    creatorError: null,
    upload: null,
    uploadId: null,
    posting: false,
    paused: false,
    received: false,
    samples: [],
    events: null,
    eventsRetries: 0,
    status: null,
    next: null,
  }

  // ----- formatting ----------------------------------------------------------------------------
  function bytes(n) {
    if (n == null) return '–'
    const units = ['B', 'KiB', 'MiB', 'GiB']
    let i = 0
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
    return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
  }
  function duration(s) {
    if (s == null || !isFinite(s)) return '–'
    s = Math.max(0, Math.round(s))
    const h = Math.floor(s / 3600); const m = Math.floor((s % 3600) / 60); const sec = s % 60
    const mm = String(m).padStart(h ? 2 : 1, '0'); const ss = String(sec).padStart(2, '0')
    return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`
  }
  function text(el, value) { el.textContent = value == null ? '' : String(value) }
  function idOf(url) { return new URL(url, location.href).pathname.replace(/\/+$/, '').split('/').pop() }

  async function api(path, options = {}) {
    const headers = Object.assign({ Accept: 'application/json' }, options.headers || {})
    return fetch(path, Object.assign({ credentials: 'same-origin', cache: 'no-store' }, options, { headers }))
  }
  async function reasonOf(response) {
    const body = (await response.text()).trim()
    return body ? body.split('\n')[0] : `HTTP ${response.status}`
  }

  // ----- sign-in -------------------------------------------------------------------------------
  async function boot() {
    if (!config.client_installed || !window.tus) $('no-client').hidden = false
    const reply = await api('/accounts/')
    if (reply.status === 401) { showSignin(); return }
    if (!reply.ok) { text($('signin-error'), await reasonOf(reply)); showSignin(); return }
    state.me = await reply.json()
    $('signin').hidden = true
    $('app').hidden = false
    $('who').hidden = false
    text($('who'), `signed in as ${state.me.subject} · uploads up to ${bytes(state.me.max_size_bytes)}`)
    fillAccounts()
    refreshForm()
    loadUploads(null)
  }

  function showSignin() {
    $('app').hidden = true
    $('signin').hidden = false
    $('token').focus()
  }

  $('signin-form').addEventListener('submit', async (event) => {
    event.preventDefault()
    const field = $('token')
    const token = field.value.trim()
    field.value = ''
    if (!token) return
    const reply = await api('/session', { method: 'POST', headers: { Authorization: `Bearer ${token}` } })
    if (!reply.ok) { text($('signin-error'), await reasonOf(reply)); return }
    text($('signin-error'), '')
    boot()
  })

  // ----- the form ------------------------------------------------------------------------------
  function fillAccounts() {
    const select = $('account')
    select.replaceChildren()
    const none = new Option('store only, do not post', '')
    select.add(none)
    for (const name of state.me.accounts) select.add(new Option(name, name))
    if (state.me.accounts.length) select.value = state.me.accounts[0]
    loadCreator()
  }

  async function loadCreator() {
    const account = $('account').value
    state.creator = null
    state.creatorError = null
    text($('creator'), account ? 'asking TikTok what this account allows…' : '')
    refreshForm()
    if (!account) return
    const reply = await api(`/accounts/${encodeURIComponent(account)}/creator_info`)
    if (account !== $('account').value) return // the choice changed meanwhile
    if (!reply.ok) {
      state.creatorError = await reasonOf(reply)
      text($('creator'), state.creatorError)
    } else {
      state.creator = await reply.json()
      const c = state.creator
      const limit = c.max_video_post_duration_sec ? ` · videos up to ${duration(c.max_video_post_duration_sec)}` : ''
      text($('creator'), `posting as @${c.creator_username} (${c.creator_nickname})${limit}`)
    }
    fillPrivacy()
    refreshForm()
  }

  function fillPrivacy() {
    const select = $('privacy')
    const before = select.value
    select.replaceChildren()
    const offered = state.creator ? state.creator.privacy_level_options : []
    const names = {
      PUBLIC_TO_EVERYONE: 'everyone',
      MUTUAL_FOLLOW_FRIENDS: 'friends (mutual followers)',
      FOLLOWER_OF_CREATOR: 'followers',
      SELF_ONLY: 'only me',
    }
    for (const level of offered) {
      if (!config.privacy_levels.includes(level)) continue
      select.add(new Option(names[level] || level, level))
    }
    if (offered.includes(before)) select.value = before
    else if (offered.includes(config.default_privacy)) select.value = config.default_privacy
    for (const [id, key] of [['disable_comment', 'comment_disabled'], ['disable_duet', 'duet_disabled'], ['disable_stitch', 'stitch_disabled']]) {
      const box = $(id)
      const locked = Boolean(state.creator && state.creator[key])
      box.disabled = locked
      if (locked) box.checked = true
      box.parentElement.title = locked ? 'turned off in this account\'s TikTok settings' : ''
    }
  }

  function formProblem() {
    const account = $('account').value
    const units = $('caption').value.length // UTF-16 code units, as TikTok counts
    if (!state.file) return 'Choose a video first.'
    if (state.me && state.file.size > state.me.max_size_bytes) {
      return `${state.file.name} is ${bytes(state.file.size)}: over this token's limit of ${bytes(state.me.max_size_bytes)}.`
    }
    if (units > config.max_caption_utf16) return `The caption is ${units} characters; TikTok allows ${config.max_caption_utf16}.`
    if (!account) return null
    if (state.creatorError) return `Cannot post to ${account}: ${state.creatorError}`
    if (!state.creator) return 'Waiting for the account\'s settings…'
    const direct = $('mode').value === 'direct'
    if (direct && !$('privacy').value) return 'Choose who can watch.'
    if (direct && $('brand_content_toggle').checked && $('privacy').value === 'SELF_ONLY') {
      return 'Branded content cannot be private: choose another audience.'
    }
    const limit = state.creator.max_video_post_duration_sec
    if (direct && limit && state.durationS && state.durationS > limit) {
      return `The video is ${duration(state.durationS)} long; this account can post up to ${duration(limit)}.`
    }
    const when = $('publish-at').value
    if (when && !(new Date(when) > new Date(Date.now() - 60000))) return 'The publish time is in the past.'
    return null
  }

  function refreshForm() {
    const units = $('caption').value.length
    const count = $('caption-count')
    text(count, `${units} / ${config.max_caption_utf16}`)
    count.dataset.units = String(units)
    count.classList.toggle('over', units > config.max_caption_utf16)
    const posting = Boolean($('account').value)
    const direct = $('mode').value === 'direct'
    for (const id of ['mode', 'publish-at', 'caption', 'disable_comment', 'disable_duet', 'disable_stitch', 'brand_content_toggle', 'brand_organic_toggle']) {
      $(id).closest('div, select').classList.toggle('muted', !posting)
    }
    $('privacy').disabled = !posting || !direct
    text($('privacy-hint'), posting && !direct ? 'Chosen in the TikTok app when the draft is finished.' : '')
    text($('brand-hint'), $('brand_content_toggle').checked ? 'Shown as "Paid partnership"; it cannot be private.' : ($('brand_organic_toggle').checked ? 'Shown as "Promotional content".' : ''))
    const problem = formProblem()
    text($('form-error'), state.file ? problem || '' : '')
    $('start').disabled = Boolean(problem) || Boolean(state.upload)
  }

  for (const id of ['caption', 'privacy', 'mode', 'publish-at', 'brand_content_toggle', 'brand_organic_toggle', 'disable_comment', 'disable_duet', 'disable_stitch']) {
    $(id).addEventListener('input', refreshForm)
    $(id).addEventListener('change', refreshForm)
  }
  $('account').addEventListener('change', loadCreator)

  // ----- the file ------------------------------------------------------------------------------
  function setFile(file) {
    if (!file) return
    state.file = file
    state.durationS = null
    text($('file-info'), `${file.name} · ${bytes(file.size)}`)
    $('drop').classList.add('has-file')
    const probe = document.createElement('video')
    const url = URL.createObjectURL(file)
    probe.preload = 'metadata'
    probe.onloadedmetadata = () => {
      state.durationS = probe.duration
      text($('file-info'), `${file.name} · ${bytes(file.size)} · ${duration(probe.duration)}`)
      URL.revokeObjectURL(url)
      refreshForm()
    }
    probe.onerror = () => URL.revokeObjectURL(url) // not playable here; the server decides
    probe.src = url
    refreshForm()
  }

  $('file').addEventListener('change', (event) => setFile(event.target.files[0]))
  const drop = $('drop')
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over') })
  drop.addEventListener('dragleave', () => drop.classList.remove('over'))
  drop.addEventListener('drop', (event) => {
    event.preventDefault()
    drop.classList.remove('over')
    if (event.dataTransfer.files.length) setFile(event.dataTransfer.files[0])
  })
  drop.addEventListener('keydown', (event) => { if (event.key === 'Enter' || event.key === ' ') $('file').click() })

  // ----- the upload ----------------------------------------------------------------------------
  function metadata() {
    const file = state.file
    const meta = { filename: file.name, filetype: file.type || 'application/octet-stream' }
    const account = $('account').value
    if (!account) return meta
    meta.account = account
    meta.mode = $('mode').value
    const caption = $('caption').value
    if (caption.trim()) meta.caption = caption
    if (meta.mode === 'direct') meta.privacy_level = $('privacy').value
    const when = $('publish-at').value
    if (when) meta.publish_at = new Date(when).toISOString()
    for (const key of ['disable_comment', 'disable_duet', 'disable_stitch', 'brand_content_toggle', 'brand_organic_toggle']) {
      meta[key] = $(key).checked ? 'true' : 'false'
    }
    return meta
  }

  $('upload-form').addEventListener('submit', async (event) => {
    event.preventDefault()
    if (formProblem() || state.upload || !window.tus) return
    const file = state.file
    state.posting = Boolean($('account').value)
    state.received = false
    state.paused = false
    state.samples = []
    state.status = null
    showJob(file.name)
    text($('job-meta'), summary())
    const upload = new window.tus.Upload(file, {
      endpoint: config.endpoint,
      chunkSize: config.chunk_size_bytes,
      retryDelays: RETRY_DELAYS_MS,
      metadata: metadata(),
      storeFingerprintForResuming: true,
      removeFingerprintOnSuccess: true,
      onUploadUrlAvailable() {
        state.uploadId = idOf(upload.url)
        $('job').dataset.uploadId = state.uploadId
      },
      onProgress: progress,
      onError(error) {
        const status = error.originalResponse ? error.originalResponse.getStatus() : null
        const body = error.originalResponse ? error.originalResponse.getBody() : ''
        let message = body ? String(body).split('\n')[0] : String(error.message || error).split('\n')[0]
        if (status === 401) message = 'Your session ended: sign in again, then pick the same file to continue.'
        failed(message)
      },
      onSuccess() {
        state.received = true
        progress(file.size, file.size)
        $('job').dataset.received = 'true'
        if (!state.status) renderStages('validating') // every byte is in: the pipeline's turn
        text($('pause'), 'Pause')
        $('pause').disabled = true
        follow(state.uploadId)
        loadUploads(null)
      },
    })
    state.upload = upload
    refreshForm()
    const previous = await upload.findPreviousUploads()
    if (previous.length) {
      previous.sort((a, b) => String(b.creationTime).localeCompare(String(a.creationTime)))
      upload.resumeFromPreviousUpload(previous[0])
      $('job').dataset.resumed = 'true'
      text($('resume-note'), `Continuing the upload started ${new Date(previous[0].creationTime).toLocaleString()} from where the server has it (its caption and options are the ones given then).`)
    } else {
      $('job').dataset.resumed = 'false'
      text($('resume-note'), '')
    }
    upload.start()
  })

  function summary() {
    const account = $('account').value
    if (!account) return 'store only'
    const privacy = $('privacy').selectedOptions[0]
    const parts = [`to ${account}`, $('mode').value === 'direct' ? (privacy ? privacy.textContent : '') : 'as a draft in the inbox']
    const when = $('publish-at').value
    if (when) parts.push(`at ${new Date(when).toLocaleString()}`)
    const caption = $('caption').value.trim()
    if (caption) parts.push(`“${caption.length > 80 ? `${caption.slice(0, 80)}…` : caption}”`)
    return parts.filter(Boolean).join(' · ')
  }

  function progress(sent, total) {
    const now = performance.now()
    state.samples.push([now, sent])
    while (state.samples.length > 2 && now - state.samples[0][0] > RATE_WINDOW_MS) state.samples.shift()
    const [t0, b0] = state.samples[0]
    const rate = now > t0 ? ((sent - b0) * 1000) / (now - t0) : 0
    const percent = total ? (100 * sent) / total : 0
    $('bar-fill').style.width = `${percent.toFixed(1)}%`
    text($('percent'), `${percent.toFixed(percent < 10 ? 1 : 0)} %`)
    text($('sent'), `${bytes(sent)} of ${bytes(total)}`)
    text($('rate'), rate > 0 ? `${bytes(rate)}/s` : '–')
    text($('eta'), rate > 0 && sent < total ? `${duration((total - sent) / rate)} left` : (sent >= total ? 'sent' : '–'))
    $('job').dataset.sent = String(sent)
    if (!state.status) renderStages('receiving')
  }

  $('pause').addEventListener('click', () => {
    const upload = state.upload
    if (!upload || state.received) return
    if (state.paused) {
      state.paused = false
      state.samples = []
      text($('pause'), 'Pause')
      text($('eta'), '–')
      upload.start()
    } else {
      state.paused = true
      text($('pause'), 'Resume')
      text($('rate'), 'paused')
      upload.abort()
    }
  })

  $('cancel').addEventListener('click', async () => {
    const upload = state.upload
    if (!upload && !state.uploadId) return
    $('cancel').disabled = true
    try {
      if (upload && !state.received) {
        await upload.abort(true) // DELETE: the server discards what it had
      } else {
        const reply = await api(`/uploads/${state.uploadId}`, { method: 'DELETE', headers: { 'Tus-Resumable': '1.0.0' } })
        if (!reply.ok) {
          text($('job-error'), await reasonOf(reply))
          $('cancel').disabled = false
          return
        }
      }
      stopEvents()
      renderStages('cancelled')
      done('Cancelled: nothing of it is kept.')
    } catch (error) {
      text($('job-error'), String(error.message || error).split('\n')[0])
      $('cancel').disabled = false
    }
    loadUploads(null)
  })

  $('another').addEventListener('click', () => {
    stopEvents()
    state.upload = null
    state.uploadId = null
    state.file = null
    state.status = null
    $('file').value = ''
    text($('file-info'), '')
    $('drop').classList.remove('has-file')
    $('job').hidden = true
    $('upload-form').hidden = false
    refreshForm()
  })

  function showJob(name) {
    $('upload-form').hidden = true
    $('job').hidden = false
    delete document.body.dataset.stage
    delete $('job').dataset.received
    delete $('job').dataset.sent
    text($('job-name'), name)
    text($('job-meta'), '')
    text($('job-error'), '')
    text($('post'), '')
    text($('media'), '')
    $('thumb').hidden = true
    $('pause').hidden = false
    $('pause').disabled = false
    $('cancel').disabled = false
    $('another').hidden = true
    text($('pause'), 'Pause')
    $('bar-fill').style.width = '0%'
    renderStages('receiving')
  }

  function failed(message) {
    text($('job-error'), message)
    renderStages('failed')
    done(null)
  }

  function done(note) {
    state.upload = null
    $('pause').hidden = true
    $('cancel').disabled = true
    $('another').hidden = false
    if (note) text($('post'), note)
  }

  // ----- the pipeline's stages (Server-Sent Events) --------------------------------------------
  function follow(id) {
    stopEvents()
    state.uploadId = id
    state.eventsRetries = 0
    $('job').dataset.uploadId = id
    const source = new EventSource(`/uploads/${encodeURIComponent(id)}/events`)
    state.events = source
    const onStatus = (event) => { state.eventsRetries = 0; render(JSON.parse(event.data)) }
    source.addEventListener('status', onStatus)
    source.addEventListener('progress', onStatus)
    source.addEventListener('end', (event) => { render(JSON.parse(event.data)); stopEvents() })
    source.addEventListener('timeout', () => { stopEvents(); pollOnce(id) })
    source.onerror = () => {
      // The browser reconnects by itself with Last-Event-ID; a refused stream (401, 404)
      // closes instead: read the status once and try again a little later, a bounded number of times.
      if (source.readyState === EventSource.CLOSED && state.events === source) {
        state.events = null
        if (state.eventsRetries++ < 5) setTimeout(() => pollOnce(id, true), 2000 * state.eventsRetries)
      }
    }
  }

  async function pollOnce(id, thenFollow) {
    const reply = await api(`/uploads/${encodeURIComponent(id)}/status`)
    if (reply.ok) {
      const status = await reply.json()
      render(status)
      if (thenFollow && !FINAL.has(status.stage) && !(status.stage === 'stored' && !status.account)) follow(id)
    } else {
      text($('job-error'), await reasonOf(reply))
    }
  }

  function stopEvents() {
    if (state.events) state.events.close()
    state.events = null
  }

  function renderStages(stage, account) {
    const posting = account === undefined ? state.posting : Boolean(account)
    const stages = posting ? STAGES : STAGES.slice(0, 5)
    const list = $('stages')
    list.replaceChildren()
    const at = stages.indexOf(stage)
    const terminalBad = stage === 'failed' || stage === 'cancelled'
    const reached = terminalBad ? (state.status ? stages.indexOf(state.status.last_good || 'receiving') : 0) : at
    stages.forEach((name, i) => {
      const item = document.createElement('li')
      item.dataset.stage = name
      text(item, LABELS[name])
      if (i < reached || (i === reached && (FINAL.has(name) || (name === 'stored' && !posting)))) item.className = 'done'
      else if (i === reached && !terminalBad) item.className = 'current'
      list.append(item)
    })
    if (terminalBad) {
      const item = document.createElement('li')
      item.dataset.stage = stage
      item.className = 'bad'
      text(item, LABELS[stage])
      list.append(item)
    }
    document.body.dataset.stage = stage
  }

  function render(status) {
    const previous = state.status
    if (status.stage !== 'failed' && status.stage !== 'cancelled') status.last_good = status.stage
    else status.last_good = previous ? previous.last_good : 'receiving'
    state.status = status
    state.posting = Boolean(status.account)
    if (status.stage === 'receiving' && status.size_bytes) {
      $('bar-fill').style.width = `${(status.percent || 0).toFixed(1)}%`
    }
    renderStages(status.stage, status.account)
    if (status.thumbnail_url) {
      const img = $('thumb')
      if (img.dataset.src !== status.thumbnail_url) { img.dataset.src = status.thumbnail_url; img.src = status.thumbnail_url }
      img.hidden = false
    }
    if (status.media_id) text($('media'), `media ${status.media_id}${status.flow_run_id ? ` · run ${status.flow_run_id}` : ''}`)
    const publish = status.publish
    if (publish) {
      const post = publish.post_id ? ` · post ${publish.post_id}` : ''
      text($('post'), `TikTok: ${publish.status || 'waiting'}${post}`)
      $('post').dataset.status = publish.status || ''
    } else if (status.stage === 'stored' && !status.account) {
      text($('post'), 'Stored (not posted: no account was chosen).')
    }
    const scheduled = publish && publish.status === 'SCHEDULED'
    if (scheduled) text($('post'), `TikTok: scheduled${publish.publish_at ? ` for ${new Date(publish.publish_at).toLocaleString()}` : ''}`)
    if (status.stage === 'failed') {
      text($('job-error'), `${status.message || 'The pipeline failed.'}${status.reason ? ` (${status.reason})` : ''}`)
    }
    const over = FINAL.has(status.stage) || (status.stage === 'stored' && (!status.account || scheduled))
    $('cancel').disabled = over
    if (over) { stopEvents(); done(null); loadUploads(null) }
  }

  // ----- the creator's uploads -----------------------------------------------------------------
  async function loadUploads(before) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) })
    if (before) query.set('before', before)
    const reply = await api(`/uploads/?${query}`)
    if (!reply.ok) return // the list is a convenience: its absence must not break the page
    const page = await reply.json()
    const list = $('uploads')
    if (!before) list.replaceChildren()
    for (const u of page.uploads) {
      const item = document.createElement('li')
      item.dataset.uploadId = u.id
      const name = document.createElement('button')
      name.type = 'button'
      name.className = 'link'
      text(name, u.filename || u.id)
      name.addEventListener('click', () => { showJob(u.filename || u.id); $('pause').hidden = true; state.received = true; follow(u.id) })
      const info = document.createElement('span')
      info.className = `stage stage-${u.stage}`
      const extra = u.stage === 'receiving' ? ` ${Math.floor(u.percent || 0)} % · pick the same file again to continue` : ''
      text(info, `${LABELS[u.stage] || u.stage}${extra}`)
      const when = document.createElement('time')
      text(when, u.created_at ? new Date(u.created_at).toLocaleString() : '')
      item.append(name, info, when)
      list.append(item)
    }
    if (!list.children.length) { const empty = document.createElement('li'); empty.className = 'hint'; text(empty, 'none yet'); list.append(empty) }
    state.next = page.next
    $('more').hidden = !page.next
  }
  $('more').addEventListener('click', () => loadUploads(state.next))

  boot().catch((error) => { text($('signin-error'), String(error.message || error)); showSignin() })
})()
