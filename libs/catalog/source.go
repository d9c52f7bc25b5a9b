package catalog

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
)

// Source schemes of registered models.
const (
	SchemeFile   = "file"
	SchemeHF     = "hf"
	SchemeOllama = "ollama"
	SchemeS3     = "s3"
)

// Weight formats a source can hold.
const (
	FormatGGUF        = "gguf"
	FormatSafetensors = "safetensors"
	// FormatOllama is a model in an Ollama library, which only Ollama runs.
	FormatOllama = "ollama"
)

// Source is where a registered model's weights are, parsed from a URI:
//
//	file:///abs/path                      a GGUF file, or a Hugging Face-style folder (config.json
//	                                      and safetensors), on the model store the workers mount
//	hf://org/repo[@revision][/file.gguf]  a Hugging Face repository, or one GGUF file in it
//	ollama://name[:tag]                   a model in Ollama's library (tag: latest)
//	s3://bucket/key                       an object or a prefix in S3
//
// The zero value is no source.
type Source struct {
	Scheme   string
	Path     string // file: the absolute path
	Repo     string // hf: "org/repo"
	Revision string // hf: a branch, tag or commit; empty: the default branch
	File     string // hf: a GGUF file in the repository; empty: the whole repository
	Model    string // ollama: "name:tag"
	Bucket   string // s3
	Key      string // s3
}

var (
	hfPart       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$`)
	hfRevision   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	ollamaPart   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$`)
	ollamaTag    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$`)
	s3Bucket     = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	schemePrefix = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*):`)
)

// maxSource bounds a source URI's length.
const maxSource = 1024

// ParseSource parses a source URI. Its errors say what is wrong in words a
// person who typed the URI can act on.
func ParseSource(s string) (Source, error) {
	if s == "" {
		return Source{}, errors.New("source is required: file:///abs/path, hf://org/repo, ollama://name:tag or s3://bucket/key")
	}
	if len(s) > maxSource {
		return Source{}, fmt.Errorf("source is longer than %d characters", maxSource)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return Source{}, errors.New("source contains control characters")
	}
	m := schemePrefix.FindStringSubmatch(s)
	if m == nil {
		hint := "file:///abs/path, hf://org/repo, ollama://name:tag or s3://bucket/key"
		switch {
		case strings.HasPrefix(s, "/"):
			hint = "file://" + s
		case strings.Count(s, "/") == 1:
			hint = "hf://" + s
		}
		return Source{}, fmt.Errorf("source %q has no scheme: write %s", s, hint)
	}
	scheme := strings.ToLower(m[1])
	rest, ok := strings.CutPrefix(s[len(m[0]):], "//")
	if !ok {
		return Source{}, fmt.Errorf("source %q: write %s://…", s, scheme)
	}
	switch scheme {
	case SchemeFile:
		return parseFile(rest)
	case SchemeHF:
		return parseHF(rest)
	case SchemeOllama:
		return parseOllama(rest)
	case SchemeS3:
		return parseS3(rest)
	}
	return Source{}, fmt.Errorf("unknown source scheme %q: want file, hf, ollama or s3", m[1])
}

func parseFile(rest string) (Source, error) {
	if !strings.HasPrefix(rest, "/") {
		return Source{}, fmt.Errorf("file source %q is not an absolute path: write file:///abs/path (three slashes)", "file://"+rest)
	}
	p := rest
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	if path.Clean(p) != p {
		return Source{}, fmt.Errorf("file source path %q is not clean: no '.', '..' or repeated '/' components", rest)
	}
	if p == "/" {
		return Source{}, errors.New("file source path is the root folder")
	}
	return Source{Scheme: SchemeFile, Path: p}, nil
}

func parseHF(rest string) (Source, error) {
	parts := strings.Split(rest, "/")
	if len(parts) < 2 {
		return Source{}, fmt.Errorf("hf source %q: want hf://org/repo[@revision][/file.gguf]", "hf://"+rest)
	}
	repo, rev, hasRev := strings.Cut(parts[1], "@")
	if !hfPart.MatchString(parts[0]) || !hfPart.MatchString(repo) {
		return Source{}, fmt.Errorf("hf source %q: organisation and repository are letters, digits, '.', '_' and '-'", "hf://"+rest)
	}
	if hasRev && !hfRevision.MatchString(rev) {
		return Source{}, fmt.Errorf("hf source %q: the revision after '@' is a branch, tag or commit of letters, digits, '.', '_' and '-'", "hf://"+rest)
	}
	src := Source{Scheme: SchemeHF, Repo: parts[0] + "/" + repo, Revision: rev}
	if len(parts) > 2 {
		file := strings.Join(parts[2:], "/")
		if path.Clean(file) != file || strings.HasPrefix(file, "../") || file == ".." || strings.HasPrefix(file, "/") {
			return Source{}, fmt.Errorf("hf source %q: the file %q is not a clean path in the repository", "hf://"+rest, file)
		}
		if !strings.HasSuffix(strings.ToLower(file), ".gguf") {
			return Source{}, fmt.Errorf("hf source %q: a file in the repository must be a .gguf file; name the repository alone for safetensors", "hf://"+rest)
		}
		src.File = file
	}
	return src, nil
}

func parseOllama(rest string) (Source, error) {
	name, tag, hasTag := strings.Cut(rest, ":")
	if !hasTag {
		tag = "latest"
	}
	parts := strings.Split(name, "/")
	ok := len(parts) <= 3 && ollamaTag.MatchString(tag)
	for _, p := range parts {
		ok = ok && ollamaPart.MatchString(p)
	}
	if !ok {
		return Source{}, fmt.Errorf("ollama source %q: want ollama://name:tag, such as ollama://llama3.2:1b", "ollama://"+rest)
	}
	return Source{Scheme: SchemeOllama, Model: name + ":" + tag}, nil
}

func parseS3(rest string) (Source, error) {
	bucket, key, _ := strings.Cut(rest, "/")
	if !s3Bucket.MatchString(bucket) || strings.Contains(bucket, "..") {
		return Source{}, fmt.Errorf("s3 source %q: the bucket is 3-63 lowercase letters, digits, '.' and '-'", "s3://"+rest)
	}
	if key == "" || strings.HasPrefix(key, "/") || path.Clean("/"+key) != "/"+strings.TrimSuffix(key, "/") {
		return Source{}, fmt.Errorf("s3 source %q: want s3://bucket/key with a clean key", "s3://"+rest)
	}
	return Source{Scheme: SchemeS3, Bucket: bucket, Key: key}, nil
}

// String returns the source's URI in its canonical form.
func (s Source) String() string {
	switch s.Scheme {
	case SchemeFile:
		return "file://" + s.Path
	case SchemeHF:
		u := "hf://" + s.Repo
		if s.Revision != "" {
			u += "@" + s.Revision
		}
		if s.File != "" {
			u += "/" + s.File
		}
		return u
	case SchemeOllama:
		return "ollama://" + s.Model
	case SchemeS3:
		return "s3://" + s.Bucket + "/" + s.Key
	}
	return ""
}

// Format is the weights' format as far as the URI tells: gguf for a
// .gguf file, ollama for an Ollama model, safetensors for a Hugging Face
// repository named without a file (unless its name ends in -GGUF) and for
// an S3 prefix; empty for a local path that only its contents can tell.
func (s Source) Format() string {
	switch s.Scheme {
	case SchemeOllama:
		return FormatOllama
	case SchemeFile:
		if strings.HasSuffix(strings.ToLower(s.Path), ".gguf") {
			return FormatGGUF
		}
		return ""
	case SchemeHF:
		if s.File != "" || strings.HasSuffix(strings.ToLower(s.Repo), "-gguf") {
			return FormatGGUF
		}
		return FormatSafetensors
	case SchemeS3:
		if strings.HasSuffix(strings.ToLower(s.Key), ".gguf") {
			return FormatGGUF
		}
		return FormatSafetensors
	}
	return ""
}

// Local reports whether the source is on the model store, where it can be
// inspected before anything runs.
func (s Source) Local() bool { return s.Scheme == SchemeFile }

// EngineSource is the source as the engine adapters take it: a local
// path, a repository ID, an Ollama model tag or an S3 URI. A Hugging Face
// revision or single file has no form the adapters take yet, so it is an
// error rather than something silently dropped.
func (s Source) EngineSource() (string, error) {
	switch s.Scheme {
	case SchemeFile:
		return s.Path, nil
	case SchemeHF:
		if s.Revision != "" || s.File != "" {
			return "", fmt.Errorf("%s: the engines take a Hugging Face repository by name only; "+
				"download the file or revision to the model store and register it as file:///…", s)
		}
		return s.Repo, nil
	case SchemeOllama:
		return s.Model, nil
	case SchemeS3:
		return s.String(), nil
	}
	return "", errors.New("no source")
}
