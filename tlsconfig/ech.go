package tlsconfig

// Encrypted Client Hello (RFC 9849): the keys a client encrypts its
// real ClientHello to, so an observer sees only the public name.
//
// gatehouse makes the keys itself and keeps them in storage under
// echKeysKey, so every replica sharing the store decrypts with the same
// set. The newest key is the one published (gatehouse ech prints it)
// and the one offered as a retry config; it is replaced every
// [ech] rotate. A replaced key still decrypts for echRetain, the time a
// resolver may go on handing out an HTTPS record that names it; after
// that a client holding it is answered with the current config as a
// retry config and reconnects with it (one more round trip, no error).

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

const (
	echKeysKey  = "ech/keys.json"
	echLockName = "ech-keys"

	// DefaultECHRotate is how often a new ECH key is made.
	DefaultECHRotate = 30 * 24 * time.Hour
	// echRetain is how long a replaced key still decrypts: DNS caches
	// may hold the HTTPS record naming it for its TTL (gatehouse
	// prints 300 s) or, with resolvers that stretch TTLs, far longer.
	echRetain = 7 * 24 * time.Hour
	// echReload is how often the key set is read back from storage, so
	// a replica adopts a rotation another one made.
	echReload = time.Minute

	echVersion   = 0xfe0d // ECHConfig.version (RFC 9849 §4)
	kemX25519    = 0x0020 // DHKEM(X25519, HKDF-SHA256)
	kdfSHA256    = 0x0001 // HKDF-SHA256
	aeadAES128   = 0x0001 // AES-128-GCM
	aeadChaCha20 = 0x0003 // ChaCha20Poly1305
)

// echKey is one stored key.
type echKey struct {
	ID      uint8     `json:"id"`
	Created time.Time `json:"created"`
	// Replaced is when a newer key took over; zero for the current one.
	Replaced   time.Time `json:"replaced,omitzero"`
	Config     []byte    `json:"config"`      // one marshalled ECHConfig
	PrivateKey []byte    `json:"private_key"` // X25519 private key
}

type echFile struct {
	PublicName string   `json:"public_name"`
	Keys       []echKey `json:"keys"` // newest first
}

// echKeyring serves the ECH keys for handshakes and keeps them rotated.
type echKeyring struct {
	storage certmagic.Storage
	log     *slog.Logger
	now     func() time.Time

	mu         sync.Mutex // serialises load/rotate
	publicName string
	rotate     time.Duration

	keys atomic.Pointer[echState]

	// changed, when set, runs after each background refresh (ECH's
	// HTTPS records are published again after a rotation: echdns.go).
	changed func()

	stop chan struct{}
	done chan struct{}
}

type echState struct {
	file echFile
	tls  []tls.EncryptedClientHelloKey
	list []byte // ECHConfigList of the current key, for DNS
}

func newECHKeyring(storage certmagic.Storage, log *slog.Logger) *echKeyring {
	return &echKeyring{storage: storage, log: log, now: time.Now}
}

// configure sets the public name and rotation period, loading or making
// the key set. A changed public name makes a new key at once (a config
// names its public name); the old one keeps decrypting for echRetain.
func (k *echKeyring) configure(ctx context.Context, publicName string, rotate time.Duration) error {
	if rotate <= 0 {
		rotate = DefaultECHRotate
	}
	k.mu.Lock()
	k.publicName, k.rotate = publicName, rotate
	k.mu.Unlock()
	if err := k.refresh(ctx); err != nil {
		return err
	}
	if k.stop == nil {
		k.stop, k.done = make(chan struct{}), make(chan struct{})
		go k.loop()
	}
	return nil
}

func (k *echKeyring) close() {
	if k != nil && k.stop != nil {
		close(k.stop)
		<-k.done
		k.stop = nil
	}
}

func (k *echKeyring) loop() {
	defer close(k.done)
	t := time.NewTicker(echReload)
	defer t.Stop()
	for {
		select {
		case <-k.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := k.refresh(ctx); err != nil {
				k.log.Warn("ECH keys: refresh failed; the keys in memory go on serving", "error", err)
			} else if k.changed != nil {
				k.changed()
			}
			cancel()
		}
	}
}

// Keys returns the keys a handshake may decrypt with (nil when ECH is
// off or no key could be made yet).
func (k *echKeyring) Keys() []tls.EncryptedClientHelloKey {
	if k == nil {
		return nil
	}
	if st := k.keys.Load(); st != nil {
		return st.tls
	}
	return nil
}

// ConfigList returns the ECHConfigList to publish and its public name.
func (k *echKeyring) ConfigList() ([]byte, string) {
	if k == nil {
		return nil, ""
	}
	if st := k.keys.Load(); st != nil {
		return st.list, st.file.PublicName
	}
	return nil, ""
}

// refresh reads the stored key set and, if it is missing, names another
// public name or its newest key is due, makes a new key under the
// storage lock (so two replicas never both rotate) and stores it.
func (k *echKeyring) refresh(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	f, err := k.load(ctx)
	if err != nil {
		return err
	}
	if k.due(f) {
		if err := k.storage.Lock(ctx, echLockName); err != nil {
			return fmt.Errorf("locking ECH keys: %w", err)
		}
		defer func() { _ = k.storage.Unlock(context.WithoutCancel(ctx), echLockName) }()
		if f, err = k.load(ctx); err != nil { // another replica may have rotated meanwhile
			return err
		}
		if k.due(f) {
			if f, err = k.rotateLocked(ctx, f); err != nil {
				return err
			}
		}
	}
	return k.install(f)
}

func (k *echKeyring) load(ctx context.Context) (echFile, error) {
	var f echFile
	b, err := k.storage.Load(ctx, echKeysKey)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, fmt.Errorf("reading %s: %w", echKeysKey, err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		// never replaced silently: a corrupt file is an operator's problem
		// to see, and the keys in memory keep serving.
		return f, fmt.Errorf("%s is not valid: %w", echKeysKey, err)
	}
	return f, nil
}

func (k *echKeyring) due(f echFile) bool {
	if len(f.Keys) == 0 || f.PublicName != k.publicName {
		return true
	}
	return k.now().Sub(f.Keys[0].Created) >= k.rotate
}

func (k *echKeyring) rotateLocked(ctx context.Context, f echFile) (echFile, error) {
	now := k.now()
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return f, err
	}
	used := map[uint8]bool{}
	var kept []echKey
	for i, old := range f.Keys {
		if i == 0 && old.Replaced.IsZero() {
			old.Replaced = now
		}
		if now.Sub(old.Replaced) < echRetain {
			kept = append(kept, old)
			used[old.ID] = true
		}
	}
	var id [1]byte
	for {
		if _, err := rand.Read(id[:]); err != nil {
			return f, err
		}
		if !used[id[0]] {
			break
		}
	}
	cfg := marshalECHConfig(id[0], priv.PublicKey().Bytes(), k.publicName)
	nf := echFile{PublicName: k.publicName, Keys: append([]echKey{{
		ID: id[0], Created: now, Config: cfg, PrivateKey: priv.Bytes(),
	}}, kept...)}
	b, err := json.MarshalIndent(nf, "", "  ")
	if err != nil {
		return f, err
	}
	if err := k.storage.Store(ctx, echKeysKey, b); err != nil {
		return f, fmt.Errorf("storing ECH keys: %w", err)
	}
	k.log.Info("ECH key made", "public_name", k.publicName, "config_id", id[0], "kept_for_decryption", len(kept),
		"next_rotation", now.Add(k.rotate).Format(time.RFC3339))
	return nf, nil
}

func (k *echKeyring) install(f echFile) error {
	if len(f.Keys) == 0 {
		return errors.New("no ECH key stored")
	}
	st := &echState{file: f}
	now := k.now()
	for i, key := range f.Keys {
		if !key.Replaced.IsZero() && now.Sub(key.Replaced) >= echRetain {
			continue
		}
		st.tls = append(st.tls, tls.EncryptedClientHelloKey{
			Config:      key.Config,
			PrivateKey:  key.PrivateKey,
			SendAsRetry: i == 0,
		})
	}
	st.list = binary.BigEndian.AppendUint16(nil, uint16(len(f.Keys[0].Config)))
	st.list = append(st.list, f.Keys[0].Config...)
	k.keys.Store(st)
	return nil
}

// marshalECHConfig builds one ECHConfig (RFC 9849 §4): X25519 with
// HKDF-SHA256 and AES-128-GCM or ChaCha20Poly1305, maximum_name_length
// 0 (unknown: clients pad by their own rule), no extensions.
func marshalECHConfig(id uint8, pub []byte, publicName string) []byte {
	var c []byte
	c = append(c, id)
	c = binary.BigEndian.AppendUint16(c, kemX25519)
	c = binary.BigEndian.AppendUint16(c, uint16(len(pub)))
	c = append(c, pub...)
	c = binary.BigEndian.AppendUint16(c, 8)
	c = binary.BigEndian.AppendUint16(c, kdfSHA256)
	c = binary.BigEndian.AppendUint16(c, aeadAES128)
	c = binary.BigEndian.AppendUint16(c, kdfSHA256)
	c = binary.BigEndian.AppendUint16(c, aeadChaCha20)
	c = append(c, 0) // maximum_name_length
	c = append(c, uint8(len(publicName)))
	c = append(c, publicName...)
	c = binary.BigEndian.AppendUint16(c, 0) // extensions
	out := binary.BigEndian.AppendUint16(nil, echVersion)
	out = binary.BigEndian.AppendUint16(out, uint16(len(c)))
	return append(out, c...)
}

// ECHInfo is what an operator publishes for ECH.
type ECHInfo struct {
	PublicName  string `json:"public_name"`
	ConfigList  string `json:"config_list"` // base64 ECHConfigList
	HTTPSRecord string `json:"https_record"`
}

// HTTPSRecord is the RFC 9460 HTTPS resource record, in zone-file
// syntax, carrying the ECHConfigList (RFC 9848 ech=) for name.
func HTTPSRecord(name string, alpn []string, configList []byte) string {
	a := ""
	for i, p := range alpn {
		if i > 0 {
			a += ","
		}
		a += p
	}
	return fmt.Sprintf("%s. 300 IN HTTPS 1 . alpn=%q ech=%q", name, a, base64.StdEncoding.EncodeToString(configList))
}

// applyECH turns ECH on, off or to another public name for cfg. A
// failure to read or make the keys refuses the config (on reload the
// old one, with its keys, keeps serving).
func (m *Manager) applyECH(cfg *routes.Config) error {
	m.echMu.Lock()
	defer m.echMu.Unlock()
	if !cfg.ECH.Enabled() {
		if m.ech != nil {
			m.ech.close()
			m.echOn.Store(nil)
			m.ech = nil
		}
		return nil
	}
	if m.ech == nil {
		m.ech = newECHKeyring(m.storage, m.log)
		m.ech.changed = m.publishECH
	}
	ctx, cancel := context.WithTimeout(m.ctx, 30*time.Second)
	defer cancel()
	if err := m.ech.configure(ctx, cfg.ECH.PublicName, time.Duration(cfg.ECH.Rotate)); err != nil {
		return fmt.Errorf("[ech]: %w", err)
	}
	m.echOn.Store(m.ech)
	return nil
}

// ECHKeys returns the keys handshakes decrypt Encrypted Client Hellos
// with; nil while ECH is off.
func (m *Manager) ECHKeys() []tls.EncryptedClientHelloKey { return m.echOn.Load().Keys() }

// ECHConfigList returns the ECHConfigList to publish in DNS and the
// public name it carries; nil while ECH is off.
func (m *Manager) ECHConfigList() ([]byte, string) { return m.echOn.Load().ConfigList() }

// LoadECH reads the ECH keys cfg's storage holds, making the first key
// set (under the storage lock) when there is none yet, so an operator
// can publish the HTTPS record before gatehouse first runs. It returns
// the ECHConfigList to publish and its public name.
func LoadECH(ctx context.Context, storage certmagic.Storage, cfg *routes.Config, log *slog.Logger) ([]byte, string, error) {
	if !cfg.ECH.Enabled() {
		return nil, "", errors.New("ECH is off: set [ech] public_name to a name gatehouse serves")
	}
	k := newECHKeyring(storage, log)
	k.publicName, k.rotate = cfg.ECH.PublicName, time.Duration(cfg.ECH.Rotate)
	if k.rotate <= 0 {
		k.rotate = DefaultECHRotate
	}
	if err := k.refresh(ctx); err != nil {
		return nil, "", err
	}
	list, name := k.ConfigList()
	return list, name, nil
}
