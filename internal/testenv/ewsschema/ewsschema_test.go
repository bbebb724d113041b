package ewsschema

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSamplesValidateAndBrokenDocumentFails(t *testing.T) {
	dir, err := SamplesDir()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.xml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples in %s: %v", dir, err)
	}
	docs := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs[filepath.Base(f)] = b
	}
	Check(t, docs)

	broken := strings.Replace(string(docs["10-getitem.response.xml"]), "ResponseCode>", "ResponseKode>", 2)
	err = Validate(map[string][]byte{"broken": []byte(broken)})
	if err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("a document with a misspelt element validated: %v", err)
	}
}
